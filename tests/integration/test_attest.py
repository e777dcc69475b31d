"""Attested procedures (issue 18 part 6): ``ckms attest`` on a real CA home, the evidence stored by its
SHA-256, the ``attest`` record on the trail, ``ckms attest list --json`` in the report's schema."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import pytest
import yaml

from ckms_app.reporting.procedures import items_from_catalog
from ckms_app.reporting.procedures_data import PROCEDURAL_ITEMS

from .conftest import CaHome, ckms, init_home

REPO = Path(__file__).resolve().parents[2]


def as_person(ca: CaHome, role: str, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return ckms(
        *args,
        "--home",
        str(ca.home),
        "--cert",
        str(ca.cred(role)[0]),
        "--password-file",
        str(ca.home / "credentials" / f"{role}.password"),
        check=check,
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(tmp_path_factory.mktemp("attest") / "home")


def test_the_snapshot_of_procedural_items_matches_the_catalog() -> None:
    """The CA host has no catalog: ckms_app keeps a generated copy, regenerated when the catalog changes
    (python -m ckms_app.reporting.procedures hardening/catalog -o ckms_app/reporting/procedures_data.py)."""
    assert list(PROCEDURAL_ITEMS) == items_from_catalog(REPO / "hardening" / "catalog", yaml.safe_load)


def test_attest_then_list_shows_it_and_the_trail_holds_it(ca: CaHome, tmp_path: Path) -> None:
    evidence = tmp_path / "key-ceremony-minutes.pdf"
    evidence.write_bytes(b"%PDF-1.4 minutes of the ceremony, signed by two custodians\n")
    digest = hashlib.sha256(evidence.read_bytes()).hexdigest()
    out = as_person(
        ca, "operator", "attest", "f.01", "--evidence", str(evidence), "--note", "inventory checked", "--json"
    )
    done = json.loads(out.stdout)
    assert (done["item"], done["person"], done["evidence_sha256"]) == ("F.01", "demo-operator", digest)

    stored = ca.home / "audit" / "evidence" / digest
    assert stored.read_bytes() == evidence.read_bytes()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640

    listed = json.loads(as_person(ca, "auditor", "attest", "list", "--json").stdout)
    assert list(listed) == ["F.01"]
    (entry,) = listed["F.01"]
    assert set(entry) == {"person", "at", "evidence_name", "evidence_sha256", "audit_seq", "note"}
    assert entry == {
        "person": "demo-operator",
        "at": entry["at"],
        "evidence_name": "key-ceremony-minutes.pdf",
        "evidence_sha256": digest,
        "audit_seq": done["audit_seq"],
        "note": "inventory checked",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", entry["at"]), entry["at"]

    with ca.db() as db:
        seq, action, target, who, detail = db.execute(
            "SELECT seq, action, target, entity_id, detail FROM audit_events WHERE seq=?",
            (done["audit_seq"],),
        ).fetchone()
    assert (seq, action, target, who) == (done["audit_seq"], "attest", "F.01", "demo-operator")
    assert json.loads(detail)["evidence_sha256"] == digest
    verified = as_person(ca, "auditor", "audit", "verify")
    assert "audit trail OK" in verified.stdout, verified.stdout


def test_unknown_and_automated_items_are_refused(ca: CaHome, tmp_path: Path) -> None:
    evidence = tmp_path / "e.txt"
    evidence.write_text("x\n")
    proc = as_person(ca, "operator", "attest", "Z.99", "--evidence", str(evidence), check=False)
    assert proc.returncode == 1 and "no guidance item 'Z.99'" in proc.stderr, proc.stderr
    proc = as_person(ca, "operator", "attest", "A.02", "--evidence", str(evidence), check=False)
    assert proc.returncode == 1 and "A.02 is not a procedural item" in proc.stderr, proc.stderr
    assert not [r for r in ca.audit("attest") if r[3] in ("A.02", "Z.99")]  # refused before anyone acted


def test_missing_evidence_and_wrong_password_are_refused(ca: CaHome, tmp_path: Path) -> None:
    proc = as_person(ca, "operator", "attest", "F.01", "--evidence", str(tmp_path / "none"), check=False)
    assert proc.returncode == 1 and "no such evidence file" in proc.stderr, proc.stderr
    assert any(r[4] == "denied" and r[3] == "F.01" for r in ca.audit("attest"))
    wrong = tmp_path / "pw"
    wrong.write_text("not the password at all\n")
    wrong.chmod(0o600)
    (tmp_path / "e.txt").write_text("x\n")
    proc = ckms(
        "attest", "F.01", "--evidence", str(tmp_path / "e.txt"), "--home", str(ca.home),
        "--as", "demo-operator", "--password-file", str(wrong), check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "wrong password" in proc.stderr, proc.stderr


def test_templates_in_english_and_japanese() -> None:
    en = ckms("attest", "template", "F.01", env={"CKMS_HOME": ""}).stdout
    assert "# Attestation record: F.01 Devices and purpose" in en
    assert "- Who (entity ID, role): " in en and "- Evidence file" in en
    assert "docs/operations.md#physical-security" in en
    ja = ckms("attest", "template", "F.01", "--lang", "ja", env={"CKMS_HOME": ""}).stdout
    assert "# 手順実施の記録: F.01 デバイスと目的" in ja and "実施者" in ja
    proc = ckms("attest", "template", "A.02", check=False)
    assert proc.returncode == 1 and "not a procedural item" in proc.stderr


def test_listing_needs_the_right_to_read_the_trail(ca: CaHome) -> None:
    proc = as_person(ca, "operator", "attest", "list", check=False)
    assert proc.returncode == 1 and "may not perform audit.read" in proc.stderr, proc.stderr
