"""Signed report bundles (issue 18 part 4): ``ckms report sign`` on a real CA home (SoftHSM audit key,
real trail), ``ckms report verify`` with only public material, and what one changed byte does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ckms_app.reporting.bundle import manifest_bytes

from .conftest import CaHome, ckms, init_home


def as_person(ca: CaHome, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
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


def make_bundle(path: Path) -> Path:
    (path / "evidence" / "F.06").mkdir(parents=True)
    (path / "report.html").write_text("<html><body>report ✓</body></html>\n")
    (path / "summary.md").write_text("# summary\n\n76 pass\n")
    (path / "evidence" / "F.06" / "sysctl.txt").write_bytes(b"fs.protected_symlinks = 1\n" * 100)
    (path / "provenance.json").write_text(json.dumps({"run_id": "run-20261130-0700", "commit": "abc"}))
    return path


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(tmp_path_factory.mktemp("report") / "home")


@pytest.fixture(scope="module")
def signed(ca: CaHome, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    bundle = make_bundle(tmp_path_factory.mktemp("bundle") / "report")
    out = as_person(ca, "auditor", "report", "sign", str(bundle), "--json")
    return bundle, json.loads(out.stdout)


@pytest.fixture()
def public(ca: CaHome, tmp_path: Path) -> Path:
    """The reviewer's own copy of the audit public key (from the CA home, not from the bundle)."""
    key = tmp_path / "audit-key.pub.pem"
    shutil.copy(ca.home / "ca" / "audit-key.pub.pem", key)
    return key


def verify(bundle: Path, *anchor: str) -> subprocess.CompletedProcess[str]:
    return ckms("report", "verify", str(bundle), *anchor, check=False, env={"CKMS_HOME": ""})


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def test_untouched_bundle_verifies_with_only_the_audit_public_key(signed, public: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, done = signed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == [
        "evidence/F.06/sysctl.txt",
        "provenance.json",
        "report.html",
        "summary.md",
    ]
    assert manifest["run_id"] == "run-20261130-0700"
    assert manifest["signer"]["signed_by"].startswith("demo-auditor")
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report bundle OK: 4 files" in proc.stdout
    assert f"audit record {done['audit_seq']}" in proc.stdout


def test_untouched_bundle_verifies_with_only_the_ca_certificate(signed, ca: CaHome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = signed
    ca_cert = tmp_path / "ca.pem"
    shutil.copy(ca.ca_cert, ca_cert)
    proc = verify(bundle, "--ca-cert", str(ca_cert), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_openssl_checks_the_signature_too(signed, public: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = signed
    proc = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(bundle / "manifest.sig")],
        input=(bundle / "manifest.json").read_bytes(),
        capture_output=True,
    )
    assert proc.returncode == 0 and b"Verified OK" in proc.stdout, proc


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.html", "report.html: SHA-256 differs"),
        ("evidence/F.06/sysctl.txt", "evidence/F.06/sysctl.txt: SHA-256 differs"),
        ("provenance.json", "provenance.json: SHA-256 differs"),
        ("manifest.json", "manifest.sig does not verify"),
        ("manifest.sig", "manifest.sig does not verify"),
        ("audit-record.json", "audit-record.json"),
        ("audit-key.pub.pem", "audit-key.pub.pem"),
        ("audit-key.cert.pem", "audit-key.cert.pem"),
        ("ca-cert.pem", "ca-cert.pem"),
    ],
)
def test_one_changed_byte_anywhere_fails(
    signed, public: Path, tmp_path: Path, name: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    bundle = copy_of(signed[0], tmp_path)
    path = bundle / name
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2, proc.stdout
    assert "FAILED" in proc.stdout and expected in proc.stdout, proc.stdout


def test_an_edited_audit_record_digest_fails(signed, public: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The record's digest is checked against the manifest, and the record against the sealed chain."""
    bundle = copy_of(signed[0], tmp_path)
    proof = json.loads((bundle / "audit-record.json").read_text())
    detail = json.loads(proof["record"]["detail"])
    detail["manifest_sha256"] = "0" * 64
    proof["record"]["detail"] = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    (bundle / "audit-record.json").write_bytes(manifest_bytes(proof))  # canonical, as the signing writes it
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2
    assert "holds manifest digest 0000" in proc.stdout and "does not chain" in proc.stdout, proc.stdout
    (bundle / "audit-record.json").write_text(
        json.dumps(json.loads(signed[0].joinpath("audit-record.json").read_text()))
    )
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2 and "not in the canonical form" in proc.stdout, proc.stdout


def test_an_extra_or_a_missing_file_fails(signed, public: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = copy_of(signed[0], tmp_path)
    (bundle / "evidence" / "later.txt").write_text("added after signing\n")
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2
    assert "evidence/later.txt: in the bundle but not in the manifest" in proc.stdout
    (bundle / "evidence" / "later.txt").unlink()
    (bundle / "summary.md").unlink()
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2
    assert "summary.md: listed in the manifest but missing" in proc.stdout


def test_another_key_or_ca_is_refused(signed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = init_home(tmp_path / "other")
    proc = verify(signed[0], "--audit-key", str(other.home / "ca" / "audit-key.pub.pem"))
    assert proc.returncode == 2 and "manifest.sig does not verify" in proc.stdout, proc.stdout
    proc = verify(signed[0], "--ca-cert", str(other.ca_cert))
    assert proc.returncode == 2
    assert "not the given one" in proc.stdout and "not issued by the given CA" in proc.stdout, proc.stdout


def test_the_trail_holds_the_report_record_and_still_verifies(signed, ca: CaHome) -> None:  # type: ignore[no-untyped-def]
    bundle, done = signed
    rows = ca.audit("audit.report")
    assert rows, "no audit.report record"
    entity, role, _, target, outcome, detail = rows[-1]
    assert (entity, role, outcome, target) == (
        "demo-auditor",
        "auditor",
        "success",
        "report:run-20261130-0700",
    )
    assert json.loads(detail)["manifest_sha256"] == done["manifest_sha256"]
    proc = as_person(ca, "auditor", "audit", "verify")
    assert "audit trail OK" in proc.stdout, proc.stdout


def test_only_a_permitted_person_signs(ca: CaHome, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    proc = as_person(ca, "operator", "report", "sign", str(bundle), check=False)
    assert proc.returncode == 1 and "may not perform audit.export" in proc.stderr, proc.stderr
    assert not (bundle / "manifest.sig").exists()


def test_a_manifest_signed_on_its_own_verifies_once_copied_back(
    ca: CaHome, public: Path, tmp_path: Path
) -> None:
    """The lab's way: the controller lists the bundle, the CA host signs only the manifest, the
    signed files are copied back into the bundle."""
    bundle = make_bundle(tmp_path / "controller" / "report")
    draft = tmp_path / "draft-manifest.json"
    ckms("report", "manifest", str(bundle), "--out", str(draft), env={"CKMS_HOME": ""})
    out = tmp_path / "ca-host-out"
    as_person(ca, "auditor", "report", "sign", "--manifest", str(draft), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == [
        "audit-key.cert.pem",
        "audit-key.pub.pem",
        "audit-record.json",
        "ca-cert.pem",
        "manifest.json",
        "manifest.sig",
    ]
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 2 and "manifest.json is missing" in proc.stdout
    for path in out.iterdir():
        shutil.copy(path, bundle / path.name)
    proc = verify(bundle, "--audit-key", str(public))
    assert proc.returncode == 0, proc.stdout


def test_bad_input_gets_a_clear_error(ca: CaHome, tmp_path: Path) -> None:
    proc = ckms("report", "verify", str(tmp_path / "nope"), "--audit-key", str(ca.ca_cert), check=False)
    assert proc.returncode == 1 and "not a PEM public key" in proc.stderr, proc.stderr
    notjson = tmp_path / "m.json"
    notjson.write_text("[]")
    proc = as_person(
        ca, "auditor", "report", "sign", "--manifest", str(notjson), "--out", str(tmp_path / "o"), check=False
    )
    assert proc.returncode == 1 and "not a ckms-report-manifest/1 manifest" in proc.stderr, proc.stderr
