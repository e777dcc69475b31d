"""2-of-3 HSM custody and wrapped backup/restore (E.08–E.12, E.22, E.23, A.58, F.54).

A real CA home and token: the SO PIN is split among three custodians; one custodian alone is
refused (and audited); any two run HSM administration. The CA key is backed up wrapped, the token
is destroyed, the key is restored into a fresh token, and the real daemon issues over real EST
certificates that verify under the original CA certificate.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from .conftest import CaHome, Daemon, ckms, curl_enroll, init_home, make_csr, split_status

CUSTODIANS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def custody_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaHome, dict[str, tuple[Path, Path]]]:
    root = tmp_path_factory.mktemp("custody")
    home = init_home(root / "home")
    pp_dir = root / "passphrases"
    pp_dir.mkdir(mode=0o700)
    args = []
    for name in CUSTODIANS:
        pp = pp_dir / name
        pp.write_text(f"correct horse battery {name}\n")
        pp.chmod(0o600)
        args += ["--custodian", name, "--passphrase-file", str(pp)]
    so_pin = (home.home / "secrets" / "token-so-pin").read_text().strip()
    out = ckms(
        "hsm",
        "custody",
        "split",
        "--home",
        str(home.home),
        "--out-dir",
        str(root / "shares"),
        "--json",
        *args,
    )
    summary = json.loads(out.stdout)
    assert summary["threshold"] == "2 of 3" and summary["so_pin_file"] == "destroyed"
    creds = {n: (root / "shares" / f"{n}.share", pp_dir / n) for n in CUSTODIANS}
    # nothing secret left in the clear: no SO PIN file, no PIN or passphrase in any share or record
    assert not (home.home / "secrets" / "token-so-pin").exists()
    for share, _ in creds.values():
        assert share.stat().st_mode & 0o777 == 0o600
        text = share.read_text()
        assert so_pin not in text and "correct horse" not in text
    record = (home.home / "hsm" / "custody.json").read_text()
    assert so_pin not in record
    assert "so-pin" not in " ".join(out.args) and so_pin not in out.stdout + out.stderr
    return home, creds


def with_custodians(creds: dict[str, tuple[Path, Path]], *names: str) -> list[str]:
    args = []
    for n in names:
        args += ["--share-file", str(creds[n][0])]
    for n in names:
        args += ["--passphrase-file", str(creds[n][1])]
    return args


def hsm_audit(home: CaHome, action: str) -> list[tuple]:
    return home.audit(action)


def test_one_custodian_is_refused_and_audited(custody_home, tmp_path: Path) -> None:
    home, creds = custody_home
    for name in CUSTODIANS:
        res = ckms(
            "hsm",
            "backup",
            "--home",
            str(home.home),
            "--out",
            str(tmp_path / f"{name}.bak"),
            *with_custodians(creds, name),
            check=False,
        )
        assert res.returncode == 1 and "needs 2 of 3" in res.stderr, res.stderr
        assert not (tmp_path / f"{name}.bak").exists()
    # the same share twice is still one custodian
    res = ckms(
        "hsm",
        "custody-check",
        "--home",
        str(home.home),
        *with_custodians(creds, "alice", "alice"),
        check=False,
    )
    assert res.returncode == 1 and "same custodian" in res.stderr
    denied = [r for r in hsm_audit(home, "hsm.backup") if r[4] == "denied"]
    assert len(denied) >= 3
    assert {json.loads(r[5])["custodians"][0] for r in denied} >= set(CUSTODIANS)
    assert all(r[1] == "custodian" for r in denied)


def test_any_two_custodians_succeed(custody_home) -> None:
    home, creds = custody_home
    for pair in itertools.combinations(CUSTODIANS, 2):
        out = ckms("hsm", "custody-check", "--home", str(home.home), "--json", *with_custodians(creds, *pair))
        assert json.loads(out.stdout)["custodians"] == sorted(pair)
    ok = [r for r in hsm_audit(home, "hsm.custody.check") if r[4] == "success"]
    assert len(ok) >= 3


def test_wrong_passphrase_and_altered_share_refused(custody_home, tmp_path: Path) -> None:
    home, creds = custody_home
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    wrong.chmod(0o600)
    res = ckms(
        "hsm",
        "custody-check",
        "--home",
        str(home.home),
        "--share-file",
        str(creds["alice"][0]),
        "--share-file",
        str(creds["bob"][0]),
        "--passphrase-file",
        str(creds["alice"][1]),
        "--passphrase-file",
        str(wrong),
        check=False,
    )
    assert res.returncode == 1 and "wrong passphrase or altered share" in res.stderr
    raw = json.loads(creds["bob"][0].read_text())
    ct = bytearray(base64.b64decode(raw["ciphertext"]))
    ct[3] ^= 0x01
    raw["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    altered = tmp_path / "bob-altered.share"
    altered.write_text(json.dumps(raw))
    res = ckms(
        "hsm",
        "custody-check",
        "--home",
        str(home.home),
        "--share-file",
        str(creds["alice"][0]),
        "--share-file",
        str(altered),
        "--passphrase-file",
        str(creds["alice"][1]),
        "--passphrase-file",
        str(creds["bob"][1]),
        check=False,
    )
    assert res.returncode == 1 and "altered share" in res.stderr
    raw = json.loads(creds["bob"][0].read_text())
    raw["index"] = 3  # a relabelled share: the header is authenticated data
    relabelled = tmp_path / "bob-relabelled.share"
    relabelled.write_text(json.dumps(raw))
    res = ckms(
        "hsm",
        "custody-check",
        "--home",
        str(home.home),
        "--share-file",
        str(creds["alice"][0]),
        "--share-file",
        str(relabelled),
        "--passphrase-file",
        str(creds["alice"][1]),
        "--passphrase-file",
        str(creds["bob"][1]),
        check=False,
    )
    assert res.returncode == 1
    assert len([r for r in hsm_audit(home, "hsm.custody.check") if r[4] == "denied"]) >= 3


PROBE = r"""
import json, sys
from pathlib import Path
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
cfg = load_config(Path(sys.argv[1]))
out = {}
with Token(cfg.token) as token:
    out["attributes"] = token.private_key_attributes(cfg.ca_key_label)
    try:
        token.read_private_value(cfg.ca_key_label); out["read_value"] = "READ"
    except pkcs11.exceptions.AttributeSensitive:
        out["read_value"] = "AttributeSensitive"
    priv = token._find(ObjectClass.PRIVATE_KEY, cfg.ca_key_label)
    kek = token._session.generate_key(KeyType.AES, 256, store=False, template={Attribute.WRAP: True})
    try:
        kek.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD); out["untrusted_wrap"] = "WRAPPED"
    except pkcs11.PKCS11Error as exc:
        out["untrusted_wrap"] = type(exc).__name__
print(json.dumps(out))
"""


def test_backup_destroy_restore_then_issue(custody_home, tmp_path: Path) -> None:
    home, creds = custody_home
    ca_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    daemon = Daemon(home)
    daemon.start()
    try:
        csr, _ = make_csr("before-backup")
        body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
        assert code == 200, body
    finally:
        daemon.stop()

    backup = tmp_path / "ca-key.backup"
    out = ckms(
        "hsm",
        "backup",
        "--home",
        str(home.home),
        "--out",
        str(backup),
        "--json",
        *with_custodians(creds, "alice", "bob"),
    )
    assert home.summary["credentials"]  # sanity
    assert "ckms-ca-key" in json.loads(out.stdout)["keys"]
    assert backup.stat().st_mode & 0o777 == 0o600
    content = json.loads(backup.read_text())
    assert content["mechanism"] == "CKM_AES_KEY_WRAP_PAD" and content["mac"]
    assert [r for r in hsm_audit(home, "hsm.backup") if r[4] == "success"]

    # a tampered backup is refused (MAC), and so is one whose wrapped bytes were altered
    tampered = tmp_path / "tampered.backup"
    bad = json.loads(backup.read_text())
    wrapped = bytearray(base64.b64decode(bad["keys"][0]["wrapped_private_key"]))
    wrapped[5] ^= 0x01
    bad["keys"][0]["wrapped_private_key"] = base64.b64encode(bytes(wrapped)).decode()
    tampered.write_text(json.dumps(bad))

    # the token is lost
    shutil.rmtree(home.home / "hsm" / "tokens")
    lost = ckms("selftest", "--home", str(home.home), check=False)
    assert lost.returncode == 1 and "FAIL hsm.pairwise" in lost.stdout
    # one custodian cannot restore; a tampered file is refused before anything is created
    res = ckms(
        "hsm",
        "restore",
        "--home",
        str(home.home),
        "--in",
        str(backup),
        *with_custodians(creds, "carol"),
        check=False,
    )
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr
    res = ckms(
        "hsm",
        "restore",
        "--home",
        str(home.home),
        "--in",
        str(tampered),
        "--token-dir",
        str(tmp_path / "tok-x"),
        *with_custodians(creds, "bob", "carol"),
        check=False,
    )
    assert res.returncode == 1 and "altered" in res.stderr, res.stderr

    new_dir = tmp_path / "fresh-token"
    out = ckms(
        "hsm",
        "restore",
        "--home",
        str(home.home),
        "--in",
        str(backup),
        "--token-dir",
        str(new_dir),
        "--json",
        *with_custodians(creds, "bob", "carol"),
    )
    restored = json.loads(out.stdout)
    assert "ckms-ca-key" in restored["restored"] and restored["pairwise_test"] == "passed"
    assert str(new_dir) in (home.home / "hsm" / "softhsm2.conf").read_text()
    assert [r for r in hsm_audit(home, "hsm.restore") if r[4] == "success"]
    assert [r for r in hsm_audit(home, "hsm.restore") if r[4] == "denied"]

    # the restored key is as protected as the original
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(home.home)], capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    attrs = json.loads(probe.stdout)
    assert attrs["attributes"]["sensitive"] and attrs["attributes"]["wrap_with_trusted"]
    assert attrs["read_value"] == "AttributeSensitive" and attrs["untrusted_wrap"] == "KeyNotWrappable"

    # the real daemon issues again; the certificates verify under the original CA certificate
    ckms(
        "ca", "recover", "--home", str(home.home)
    )  # the failed self-test above put the CA in the error state
    daemon = Daemon(home)
    daemon.start()
    try:
        for i in range(3):
            csr, _ = make_csr(f"after-restore-{i}")
            body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
            assert code == 200, body
            pem = subprocess.run(
                ["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
                input=base64.b64decode(body),
                capture_output=True,
                timeout=30,
            ).stdout
            cert = x509.load_pem_x509_certificate(pem)
            cert.verify_directly_issued_by(ca_cert)
            (tmp_path / "leaf.pem").write_bytes(pem)
            verify = subprocess.run(
                ["openssl", "verify", "-CAfile", str(home.ca_cert), str(tmp_path / "leaf.pem")],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        daemon.stop()


def test_key_generation_and_destruction_need_two(custody_home) -> None:
    home, creds = custody_home
    res = ckms(
        "hsm",
        "keygen",
        "--home",
        str(home.home),
        "--label",
        "next-ca-key",
        *with_custodians(creds, "bob"),
        check=False,
    )
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr
    ckms(
        "hsm",
        "keygen",
        "--home",
        str(home.home),
        "--label",
        "next-ca-key",
        *with_custodians(creds, "alice", "carol"),
    )
    res = ckms(
        "hsm",
        "destroy-key",
        "--yes",
        "--home",
        str(home.home),
        "--label",
        "next-ca-key",
        *with_custodians(creds, "carol"),
        check=False,
    )
    assert res.returncode == 1
    ckms(
        "hsm",
        "destroy-key",
        "--yes",
        "--home",
        str(home.home),
        "--label",
        "next-ca-key",
        *with_custodians(creds, "carol", "alice"),
    )
    assert [r for r in hsm_audit(home, "hsm.key.generate") if r[4] == "denied"]
    assert [r for r in hsm_audit(home, "hsm.key.destroy") if r[4] == "success"]
