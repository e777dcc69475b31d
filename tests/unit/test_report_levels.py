"""Statuses a reviewer can sign: configuration-only passes, not written vs not executed, attestations.

A result observed only at configuration level (a lab container: no auditd, no AppArmor, no firmware)
is "pass (configuration)" and never a plain pass; ``--require`` accepts it only where the platform
could not do better (a container, per the inventory), never on a VM or a real host.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hardening import levels
from hardening.catalog import load_catalog
from hardening.report import (
    AttestationError,
    evaluate,
    load_attestations,
    requirement_failures,
    to_markdown,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_WORDS = "configuration: auditd cannot run inside this lab container"


def rec(check: str, outcome: str = "passed", host: str = "ca1", **extra: Any) -> dict[str, Any]:
    return {
        "check": check,
        "test": "t",
        "host": host,
        "outcome": outcome,
        "duration_s": 0.1,
        "message": None,
        "evidence": [{"label": "seen", "value": "x"}],
        "limitation": None,
        "at": "2026-11-30T07:00:00Z",
        **extra,
    }


def config_level(check: str, host: str = "ca1") -> dict[str, Any]:
    """What the audit checks write in a container: the level in their evidence."""
    r = rec(check, host=host)
    r["evidence"] = [*r["evidence"], {"label": "verification level", "value": CONTAINER_WORDS}]
    return r


def by_id(items: list[Any]) -> dict[str, Any]:
    return {i.control.id: i for i in items}


def test_record_level_reads_the_evidence_the_limit_and_an_explicit_level() -> None:
    assert levels.record_level(rec("check:F.12.auditd_watches_identity_and_config")) == "runtime"
    assert (
        levels.record_level(config_level("check:F.12.auditd_watches_identity_and_config")) == "configuration"
    )
    assert levels.record_level(rec("check:X.y", level="configuration")) == "configuration"
    # a limitation makes a run-time check configuration-level; on any other check it stays a limitation
    limited = rec("check:F.07.secure_boot_enabled", limitation="a lab container sees no firmware")
    assert levels.record_level(limited) == "configuration"
    other = rec("check:E.29.static_security_scan_clean", limitation="no vulnerability database")
    assert levels.record_level(other) == "runtime"
    # "verification level" that is not "configuration" (e.g. a VM saying "runtime") is a run-time result
    vm = rec("check:F.12.auditd_watches_identity_and_config")
    vm["evidence"].append({"label": "verification level", "value": "runtime: auditd active"})
    assert levels.record_level(vm) == "runtime"


def test_configuration_only_pass_is_its_own_status_and_never_a_plain_pass() -> None:
    catalog = load_catalog()
    checks = catalog["F.12"].all_checks()
    runtime = [rec(c) for c in checks]
    assert by_id(evaluate(catalog, runtime))["F.12"].status == "pass"
    mixed = [config_level(checks[0])] + [rec(c) for c in checks[1:]]
    items = evaluate(catalog, mixed, host_kinds={"ca1": "systemd-nspawn"})
    f12 = by_id(items)["F.12"]
    assert f12.status == "pass-configuration"
    assert [(r["check"], r["host_kind"]) for r in f12.configuration_only] == [(checks[0], "systemd-nspawn")]
    md = to_markdown(items, "en", "now")
    assert "pass (configuration)" in md and CONTAINER_WORDS in md
    assert "合格（設定のみ確認）" in to_markdown(items, "ja", "now")
    # a failing record elsewhere still makes it fail: the level never hides a failure
    failing = mixed + [rec(checks[1], "failed", host="ca2")]
    assert by_id(evaluate(catalog, failing))["F.12"].status == "fail"


def _f_records(kind_words: bool = True) -> list[dict[str, Any]]:
    """Every F check passed; the run-time ones only at configuration level (a container lab)."""
    catalog = load_catalog()
    out = []
    for c in catalog.values():
        if c.chapter != "F":
            continue
        for check in c.all_checks():
            out.append(config_level(check) if check in levels.RUNTIME_CHECKS else rec(check))
    return out


def test_require_accepts_configuration_only_on_containers() -> None:
    catalog = load_catalog()
    records = _f_records()
    container = {"ca1": "systemd-nspawn"}
    items = evaluate(catalog, records, host_kinds=container)
    statuses = {i.control.id: i.status for i in items if i.control.chapter == "F"}
    assert {k for k, v in statuses.items() if v == "pass-configuration"} >= {
        "F.06",
        "F.07",
        "F.12",
        "F.13",
        "F.14",
    }
    assert not requirement_failures(items, ["F"], container)
    # the same results from a VM (or a real host, or a host of unknown kind) do not meet the requirement
    for kinds in ({"ca1": "kvm"}, {"ca1": "none"}, {}):
        bad = requirement_failures(evaluate(catalog, records, host_kinds=kinds), ["F"], kinds)
        assert {i.control.id for i, _ in bad} >= {"F.06", "F.07", "F.12", "F.13", "F.14"}, kinds
        assert all("where run time was observable" in why for _, why in bad)
    # a configuration-level result of a check that needs no run-time observation is accepted anywhere
    f06l = [r for r in records if r["check"] == "check:F.06.l.sshd_hardened"][0]
    assert levels.accepted_at_configuration({**f06l, "level": "configuration"}, {"ca1": "kvm"})


def test_require_from_the_command_line_names_the_item_and_host(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_f_records()))
    vm = tmp_path / "inventory.json"
    vm.write_text(
        json.dumps({"collected_at": "2026-11-30T07:00:00Z", "hosts": {"ca1": {"virtualisation": "kvm"}}})
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hardening.report",
            "--results",
            str(results),
            "--inventory",
            str(vm),
            "--out",
            str(tmp_path / "out"),
            "--require",
            "F",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "F.12: pass (configuration) where run time was observable: " in proc.stdout
    assert "check:F.12.auditd_watches_identity_and_config @ ca1 (kvm)" in proc.stdout
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["summary"]["pass-configuration"] >= 5
    f12 = next(i for i in doc["items"] if i["id"] == "F.12")
    assert f12["configuration_only"][0]["host_kind"] == "kvm"


def test_not_written_and_not_executed_are_told_apart(tmp_path: Path) -> None:
    catalog = load_catalog()
    f06 = catalog["F.06"]
    checks = f06.all_checks()
    defined = {c: "hardening/checks/x.py" for c in checks}
    assert by_id(evaluate(catalog, [], defined=defined))["F.06"].status == "not-executed"
    ghost = checks[0]
    without = {c: p for c, p in defined.items() if c != ghost}
    assert by_id(evaluate(catalog, [], defined=without))["F.06"].status == "not-written"
    partly = by_id(evaluate(catalog, [rec(c) for c in checks[1:]], defined=without))["F.06"]
    assert partly.status == "partial" and partly.not_written == [ghost] and partly.not_executed == []
    # an automated item that names no check at all is "not written"
    bare = dict(catalog)
    bare["F.06"] = dataclasses.replace(f06, checks=(), subitems={})
    assert by_id(evaluate(bare, []))["F.06"].status == "not-written"
    items = evaluate(catalog, [rec(c) for c in checks[1:]], defined=without)
    write_report(tmp_path, items, "en")
    page = (tmp_path / "report.html").read_text()
    assert "check not written" in page
    doc = json.loads((tmp_path / "report.json").read_text())
    item = next(i for i in doc["items"] if i["id"] == "F.06")
    assert item["checks_not_written"] == [ghost]


def _procedural(catalog: Any) -> str:
    return next(c.id for c in catalog.values() if c.applicability == "procedural" and not c.all_checks())


def attestation(**extra: Any) -> dict[str, Any]:
    return {
        "person": "auditor-1",
        "at": "2026-11-30T06:00:00Z",
        "evidence_name": "ceremony-minutes.pdf",
        "evidence_sha256": "ab" * 32,
        "audit_seq": 42,
        "note": "key ceremony witnessed",
        **extra,
    }


def test_procedural_items_show_attested_or_not(tmp_path: Path) -> None:
    catalog = load_catalog()
    item = _procedural(catalog)
    assert load_attestations(tmp_path / "missing.json", catalog) == {}
    none = by_id(evaluate(catalog, []))
    assert none[item].attestation == "not-attested"
    path = tmp_path / "attestations.json"
    path.write_text(json.dumps({item: [attestation()]}))
    items = evaluate(catalog, [], attestations=load_attestations(path, catalog))
    assert by_id(items)[item].attestation == "attested" and by_id(items)[item].status == "procedural"
    write_report(tmp_path / "out", items, "ja")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "実施記録あり" in page and "ceremony-minutes.pdf" in page and "ab" * 32 in page
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["attestation_summary"]["attested"] == 1
    assert doc["attestation_summary"]["not-attested"] >= 1


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"A.99": [attestation()]}, "A.99: not a catalog item"),
        ({"F.06": [attestation()]}, "F.06: not a procedural item"),
        ({"PROC": [attestation(evidence_sha256="xyz")]}, "not 64 lower-case hex digits"),
        ({"PROC": [attestation(audit_seq="7")]}, "'audit_seq' must be int"),
        ({"PROC": [attestation(at="yesterday")]}, "is not an ISO-8601 time"),
        ({"PROC": [attestation(extra=1)]}, "unknown keys ['extra']"),
        ({"PROC": {"person": "x"}}, "expected a list of attestations"),
    ],
)
def test_bad_attestations_are_refused_with_the_reason(tmp_path: Path, doc: dict, words: str) -> None:
    catalog = load_catalog()
    doc = {(_procedural(catalog) if k == "PROC" else k): v for k, v in doc.items()}
    path = tmp_path / "attestations.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AttestationError, match=".*") as err:
        load_attestations(path, catalog)
    assert words in str(err.value)
