"""``ckms ca rollover`` under 2-of-3 custody and the destroy gate of ``ckms hsm destroy-key`` (issue 14 part 3).

Real SoftHSM2 token, real linter, real custody shares; no daemon. One CA home goes through a whole rollover:
a device certificate issued under the first key; ``begin`` refused with one custodian and done with two
(new key in the token, new CA certificate with the same name and another key, links that verify both ways,
``[ca.next]``); ``activate`` (tables moved, the manifest verifies under the new certificate); the old key's
destruction refused while it has live certificates or only one custodian, allowed once they are revoked and
listed on a CRL the old key signed, after which ``[[ca.retired]]`` forgets it.

The CRL of the retired key is signed by the test with that key in the token and stored as a ``crls`` row
(the publisher's multi-generation part is built separately); the gate checks the CRL itself, not the row.
A second CA, under an external root, rolls over with ``begin --request-out`` and ``import-cert``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.authority.rbac import Principal
from ckms_app.authority.revocation import revoke
from ckms_app.authority.selftest import integrity_test
from ckms_app.config import load_config
from ckms_app.store.engine import open_engine
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.key_ids import subject_key_id

from .conftest import CaHome, ckms, init_home

CUSTODIANS = ("alice", "bob", "carol")
Creds = dict[str, tuple[Path, Path]]

# Run in a subprocess, as the CLI would: the token is opened by one process at a time.
HELPER = r"""
import asyncio, datetime as dt, json, sys
from pathlib import Path
import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass
from sqlalchemy import func, select
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.signer import open_signer
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
from ckms_app.store.engine import open_engine
from ckms_app.store.schema import certificates, crls, revocations, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.key_ids import subject_key_id
from ckms_app.x509.profiles import end_entity_builder, new_serial

config = load_config(Path(sys.argv[1]))
command = sys.argv[2]
writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
with Token(config.token) as token:
    if command == "labels":
        objs = token._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        print(json.dumps(sorted(str(o[Attribute.LABEL]) for o in objs)))
    elif command == "issue":  # a device certificate from the active key, through the signer
        ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
        device = ec.generate_private_key(ec.SECP256R1())
        builder = end_entity_builder(
            profile=config.profile("device"), subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sys.argv[3])]),
            sans=(), public_key=device.public_key(), issuer=ca_cert, serial=new_serial(), now=utcnow(),
            crl_url=config.server.crl_url("full", config.ca_generation),
            delta_crl_url=config.server.crl_url("delta", config.ca_generation),
        )
        async def sign():
            async with open_signer(config, token.load_ec_key(config.ca_key_label)) as signer:
                return await signer.certificate(builder)
        cert, der = asyncio.run(sign())
        row = certificate_row(cert, der, kind="end-entity", profile="device", requested_by="test",
                              csr_sha256=None, pubkey_sha256=public_key_sha256(device.public_key()))
        writer.run(lambda c: c.execute(certificates.insert(), row))
        print(json.dumps({"serial": row["serial"], "pem": cert.public_bytes(serialization.Encoding.PEM).decode()}))
    elif command == "crl":  # a full CRL of every revocation, signed by the retired generation's key
        old = config.ca_retired[0]
        ca_cert = x509.load_pem_x509_certificate(old.cert.read_bytes())
        with open_engine(config.database_url).connect() as c:
            revoked = c.execute(select(revocations)).all()
            number = (c.execute(select(func.max(crls.c.crl_number))).scalar() or 0) + 1
        now = utcnow()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now).next_update(now + dt.timedelta(days=1))
                   .add_extension(x509.CRLNumber(number), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier(bytes.fromhex(subject_key_id(ca_cert)), None, None), critical=False))
        for r in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(r.serial, 16)).revocation_date(r.revoked_at).build())
        key = token.load_ec_key(old.key_label)
        crl = builder.sign(key, key.curve_info.hash_algorithm)
        # kind "base": a full CRL that also starts a delta base, as the publisher's first one is
        row = {"crl_number": number, "kind": "base", "base_crl_number": None, "this_update": crl.last_update_utc,
               "next_update": crl.next_update_utc, "max_revocation_id": max(r.id for r in revoked),
               "der": crl.public_bytes(serialization.Encoding.DER), "issuer_key_id": subject_key_id(ca_cert)}
        writer.run(lambda c: c.execute(crls.insert(), row))
        print(json.dumps({"crl_number": number}))
writer.close()
"""


def helper(home: CaHome, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", HELPER, str(home.home), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _passphrase(dir_: Path, name: str) -> Path:
    path = dir_ / name
    path.write_text(f"pass phrase of {name}\n")
    path.chmod(0o600)
    return path


def custody_split(home: CaHome, root: Path) -> Creds:
    pp_dir = root / "passphrases"
    pp_dir.mkdir(mode=0o700)
    args = []
    for name in CUSTODIANS:
        args += ["--custodian", name, "--passphrase-file", str(_passphrase(pp_dir, name))]
    ckms("hsm", "custody", "split", "--home", str(home.home), "--out-dir", str(root / "shares"), *args)
    return {n: (root / "shares" / f"{n}.share", pp_dir / n) for n in CUSTODIANS}


def with_custodians(creds: Creds, *names: str) -> list[str]:
    return [*(a for n in names for a in ("--share-file", str(creds[n][0])))] + [
        a for n in names for a in ("--passphrase-file", str(creds[n][1]))
    ]


def ca_table(home: CaHome) -> dict:  # type: ignore[type-arg]
    return tomllib.loads((home.home / "ckms.toml").read_text())["ca"]


def key_grants(home: CaHome, label: str) -> list[tuple[str, str]]:
    """The ACL's grants on one key of the token (role, operation)."""
    with home.db() as conn:
        rows = conn.execute(
            "SELECT role, operation FROM role_permissions WHERE resource = ? ORDER BY role, operation",
            (f"key:{label}",),
        ).fetchall()
    return [tuple(r) for r in rows]


def status(home: CaHome) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(ckms("ca", "rollover", "status", "--home", str(home.home), "--json").stdout)[
        "generations"
    ]


def openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("rollover")
    home = init_home(root / "home", demo=False)
    creds = custody_split(home, root)
    device = helper(home, "issue", "device-before-rollover")
    assert isinstance(device, dict)
    (root / "device.pem").write_text(device["pem"])
    return {"home": home, "creds": creds, "root": root, "device": device}


def test_begin_needs_two_custodians_and_makes_the_next_generation(rolled: dict) -> None:  # type: ignore[type-arg]
    home, creds, root = rolled["home"], rolled["creds"], rolled["root"]
    h = str(home.home)
    res = ckms("ca", "rollover", "begin", "--home", h, *with_custodians(creds, "carol"), check=False)
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr, res.stderr
    denied = [r for r in home.audit("ca.rollover.begin") if r[4] == "denied"]
    assert denied and json.loads(denied[-1][5])["custodians"] == ["carol"] and denied[-1][1] == "custodian"
    assert "next" not in ca_table(home) and "ckms-ca-key-g2" not in helper(home, "labels")  # type: ignore[operator]

    out = ckms("ca", "rollover", "begin", "--home", h, "--json", *with_custodians(creds, "alice", "bob"))
    result = json.loads(out.stdout)
    assert result["generation"] == 2 and result["key_label"] == "ckms-ca-key-g2"
    assert result["custodians"] == ["alice", "bob"]
    assert "ckms-ca-key-g2" in helper(home, "labels")  # type: ignore[operator]
    ok = [r for r in home.audit("ca.rollover.begin") if r[4] == "success"]
    assert ok and json.loads(ok[-1][5])["custodians"] == ["alice", "bob"]
    assert (
        key_grants(home, "ckms-ca-key-g2") == key_grants(home, "ckms-ca-key") != []
    )  # administered alike (E.06)

    old = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    new = x509.load_pem_x509_certificate((home.home / "ca" / "g2" / "ca.pem").read_bytes())
    assert new.subject == old.subject and subject_key_id(new) != subject_key_id(old)
    new.verify_directly_issued_by(new)
    assert new.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    new_with_old, old_with_new = x509.load_pem_x509_certificates(
        (home.home / "ca" / "g2" / "links.pem").read_bytes()
    )
    new_with_old.verify_directly_issued_by(old)
    old_with_new.verify_directly_issued_by(new)
    assert subject_key_id(new_with_old) == subject_key_id(new)
    assert subject_key_id(old_with_new) == subject_key_id(old)
    # a relying party that trusts only the new certificate accepts the old key's device through OldWithNew
    device = str(root / "device.pem")
    assert openssl_verify("-CAfile", str(home.home / "ca" / "g2" / "ca.pem"), device).returncode != 0
    (root / "own.pem").write_bytes(old_with_new.public_bytes(serialization.Encoding.PEM))
    done = openssl_verify(
        "-CAfile", str(home.home / "ca" / "g2" / "ca.pem"), "-untrusted", str(root / "own.pem"), device
    )
    assert done.returncode == 0, done.stdout + done.stderr

    table = ca_table(home)
    assert table["next"] == {"generation": 2, "key_label": "ckms-ca-key-g2", "cert": "ca/g2/ca.pem",
                             "links": "ca/g2/links.pem"}  # fmt: skip
    config = load_config(home.home)
    assert config.ca_next is not None and config.ca_next.generation == 2 and config.ca_generation == 1
    assert ckms("selftest", "--home", h, check=False).returncode == 0  # the manifest covers the new ckms.toml
    again = ckms(
        "ca", "rollover", "begin", "--home", h, *with_custodians(creds, "alice", "carol"), check=False
    )
    assert again.returncode == 1 and "begun already" in again.stderr
    roles = [(g["generation"], g["role"]) for g in status(home)]
    assert roles == [(1, "active"), (2, "next")]


def test_activate_moves_the_tables_and_re_signs_the_manifest(rolled: dict) -> None:  # type: ignore[type-arg]
    home, creds = rolled["home"], rolled["creds"]
    h = str(home.home)
    out = ckms("ca", "rollover", "activate", "--home", h, *with_custodians(creds, "bob", "carol"))
    assert "systemctl restart ckms-ca" in out.stdout
    table = ca_table(home)
    assert (table["generation"], table["key_label"], table["cert"]) == (2, "ckms-ca-key-g2", "ca/g2/ca.pem")
    assert "next" not in table
    assert table["retired"] == [{"generation": 1, "key_label": "ckms-ca-key", "cert": "ca/ca.pem"}]
    config = load_config(home.home)
    new = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    assert integrity_test(config, new).ok
    assert ckms("selftest", "--home", h, check=False).returncode == 0
    assert [r[4] for r in home.audit("ca.rollover.activate")] == ["success"]
    old, active = status(home)
    assert (old["generation"], old["role"], active["generation"], active["role"]) == (
        1,
        "retired",
        2,
        "active",
    )
    assert old["live_certificates"] >= 2  # the device and the daemon's TLS certificate
    assert old["may_destroy"] is False and active["live_certificates"] == 0


def _destroy(home: CaHome, creds: Creds, *names: str) -> subprocess.CompletedProcess[str]:
    return ckms(
        "hsm", "destroy-key", "--yes", "--home", str(home.home), "--label", "ckms-ca-key", "--json",
        *with_custodians(creds, *names), check=False,
    )  # fmt: skip


def test_the_retired_key_is_destroyed_only_when_nothing_it_issued_needs_it(rolled: dict) -> None:  # type: ignore[type-arg]
    home, creds = rolled["home"], rolled["creds"]
    res = _destroy(home, creds, "alice", "bob")
    assert res.returncode == 1 and "still needed" in res.stderr and "valid certificates" in res.stderr, (
        res.stderr
    )
    denied = [r for r in home.audit("hsm.key.destroy") if r[4] == "denied"]
    assert denied and json.loads(denied[-1][5])["custodians"] == ["alice", "bob"]
    assert "ckms-ca-key" in helper(home, "labels")  # type: ignore[operator]

    # the gate does not rest on ckms.toml: with the [[ca.retired]] entry taken out by hand, the key is still
    # known by its public key and refused while what it issued lives
    toml = home.home / "ckms.toml"
    saved = toml.read_bytes()
    raw = tomllib.loads(saved.decode())
    del raw["ca"]["retired"]
    toml.write_text(tomli_w.dumps(raw))
    try:
        res = _destroy(home, creds, "alice", "bob")
        assert res.returncode == 1 and "named by no key generation" in res.stderr, res.stderr
    finally:
        toml.write_bytes(saved)
    assert "ckms-ca-key" in helper(home, "labels")  # type: ignore[operator]

    # revoke everything the old key issued (the device and the daemon's first TLS certificate)
    config = load_config(home.home)
    engine = open_engine(config.database_url)
    with engine.connect() as conn:
        serials = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT serial FROM certificates WHERE kind != 'ca' AND issuer_key_id = ?",
                (status(home)[0]["subject_key_id"],),
            )
        ]
    engine.dispose()
    assert rolled["device"]["serial"] in serials
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        for serial in serials:
            asyncio.run(
                revoke(writer, Principal("test-staff", "operator+administrator"), serial, "superseded")
            )
    finally:
        writer.close()
    res = _destroy(home, creds, "alice", "bob")
    # the ceremony's CRL of the old key predates the revocations: not enough
    assert res.returncode == 1 and "not on its latest full CRL" in res.stderr, res.stderr

    helper(home, "crl")
    assert status(home)[0]["may_destroy"] is True
    res = _destroy(home, creds, "carol")
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr, res.stderr
    result = json.loads(_destroy(home, creds, "carol", "alice").stdout)
    assert result["destroyed"] == "ckms-ca-key" and result["retired_generation_removed"] == 1
    assert "retired" not in ca_table(home)
    assert key_grants(home, "ckms-ca-key") == [] and key_grants(home, "ckms-ca-key-g2") != []
    labels = helper(home, "labels")
    assert "ckms-ca-key" not in labels and "ckms-ca-key-g2" in labels  # type: ignore[operator]
    assert ckms("selftest", "--home", str(home.home), check=False).returncode == 0
    assert [g["generation"] for g in status(home)] == [2]


def _external_root() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-384 root signing with SHA-384 above a P-256 CA: the CA's manifest is signed with its own key's hash
    (SHA-256), not the hash of its certificate's signature, and the integrity self-test verifies it so."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "External Root")])
    now = dt.datetime.now(dt.UTC)
    root = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    return key, root


def _certify(csr_path: Path, key: ec.EllipticCurvePrivateKey, root: x509.Certificate, out: Path) -> None:
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(root.subject).public_key(csr.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_ca_under_an_external_root_rolls_over_with_a_request(tmp_path: Path) -> None:
    root_key, root = _external_root()
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    home = tmp_path / "sub"
    ckms("ca", "init", "--home", str(home), "--csr-out", str(tmp_path / "g1.csr"))
    _certify(tmp_path / "g1.csr", root_key, root, tmp_path / "g1.pem")
    ckms(
        "ca",
        "import-cert",
        "--home",
        str(home),
        "--cert",
        str(tmp_path / "g1.pem"),
        "--chain",
        str(tmp_path / "root.pem"),
    )
    ca = CaHome(home, {})
    creds = custody_split(ca, tmp_path)
    two = with_custodians(creds, "alice", "bob")
    res = ckms("ca", "rollover", "begin", "--home", str(home), *two, check=False)
    assert res.returncode == 1 and "--request-out" in res.stderr, res.stderr
    out = ckms(
        "ca",
        "rollover",
        "begin",
        "--home",
        str(home),
        "--request-out",
        str(tmp_path / "g2.csr"),
        "--json",
        *two,
    )
    assert json.loads(out.stdout)["status"] == "pending-ca-certificate"
    assert "next" not in ca_table(ca)
    csr = x509.load_pem_x509_csr((tmp_path / "g2.csr").read_bytes())
    old = x509.load_pem_x509_certificate((tmp_path / "g1.pem").read_bytes())
    assert csr.is_signature_valid and csr.subject == old.subject and csr.public_key() != old.public_key()

    wrong = ckms(
        "ca", "rollover", "import-cert", str(tmp_path / "g1.pem"), "--home", str(home), *two, check=False
    )
    assert wrong.returncode == 1 and "not for the new key" in wrong.stderr, wrong.stderr
    _certify(tmp_path / "g2.csr", root_key, root, tmp_path / "g2.pem")
    ckms(
        "ca",
        "rollover",
        "import-cert",
        str(tmp_path / "g2.pem"),
        "--home",
        str(home),
        *with_custodians(creds, "bob", "carol"),
    )
    config = load_config(home)
    assert config.ca_next is not None and config.ca_next.generation == 2
    new = x509.load_pem_x509_certificate(config.ca_next.cert.read_bytes())
    new.verify_directly_issued_by(root)
    new_with_old, old_with_new = x509.load_pem_x509_certificates(config.ca_next.links.read_bytes())  # type: ignore[union-attr]
    new_with_old.verify_directly_issued_by(old)
    old_with_new.verify_directly_issued_by(new)
    assert ckms("selftest", "--home", str(home), check=False).returncode == 0
    assert [r[4] for r in ca.audit("ca.rollover.import_cert")] == ["error", "success"]
