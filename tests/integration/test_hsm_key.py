"""The CA key lives in the token and cannot be read out (E.08–E.15, A.43).

These run in a subprocess per case so each gets a fresh PKCS#11 library state with the CA
home's SoftHSM configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .conftest import CaHome, init_home

PROBE = r"""
import json, sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
import pkcs11
from pkcs11 import Attribute, ObjectClass
cfg = load_config(Path(sys.argv[1]))
out = {}
with Token(cfg.token) as token:
    out["attributes"] = token.private_key_attributes(cfg.ca_key_label)
    try:
        token.read_private_value(cfg.ca_key_label)
        out["read_value"] = "READ"
    except pkcs11.exceptions.AttributeSensitive:
        out["read_value"] = "AttributeSensitive"
    key = token.load_ec_key(cfg.ca_key_label)
    try:
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        out["private_bytes"] = "EXPORTED"
    except Exception as exc:
        out["private_bytes"] = type(exc).__name__
    try:
        key.private_numbers()
        out["private_numbers"] = "EXPORTED"
    except Exception as exc:
        out["private_numbers"] = type(exc).__name__
    priv = token._find(ObjectClass.PRIVATE_KEY, cfg.ca_key_label)
    # The key is extractable only wrapped by a key the SO marked trusted: a key the CA's own user
    # login can create must not wrap it (CKA_WRAP_WITH_TRUSTED).
    from pkcs11 import KeyType, Mechanism
    untrusted = token._session.generate_key(KeyType.AES, 256, store=False, template={Attribute.WRAP: True})
    for mech in (Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_KEY_WRAP):
        try:
            untrusted.wrap_key(priv, mechanism=mech)
            out[f"untrusted_wrap_{mech.name}"] = "WRAPPED"
        except pkcs11.PKCS11Error as exc:
            out[f"untrusted_wrap_{mech.name}"] = type(exc).__name__
    # Nor can the user give the untrusted key CKA_TRUSTED (only the SO can).
    try:
        untrusted[Attribute.TRUSTED] = True
        out["make_trusted"] = "ALLOWED"
    except pkcs11.PKCS11Error as exc:
        out["make_trusted"] = type(exc).__name__
    # CKA_WRAP_WITH_TRUSTED and CKA_SENSITIVE are one-way: they cannot be cleared.
    try:
        priv[Attribute.WRAP_WITH_TRUSTED] = False
        out["clear_wrap_with_trusted"] = "ALLOWED"
    except pkcs11.PKCS11Error as exc:
        out["clear_wrap_with_trusted"] = type(exc).__name__
    try:
        priv[Attribute.SENSITIVE] = False
        out["make_insensitive"] = "ALLOWED"
    except pkcs11.PKCS11Error as exc:
        out["make_insensitive"] = type(exc).__name__
print(json.dumps(out))
"""


def probe(home: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, str(home)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_ca_private_key_is_sensitive_and_cannot_be_read(ca: CaHome) -> None:
    out = probe(ca.home)
    # Extractable only as a wrapped backup under a trusted key (2-of-3 custody, see test_custody_backup).
    assert out["attributes"] == {
        "sensitive": True,
        "extractable": True,
        "always_sensitive": True,
        "never_extractable": False,
        "local": True,
        "wrap_with_trusted": True,
    }
    assert out["read_value"] == "AttributeSensitive"
    assert out["private_bytes"] == "HsmError" and out["private_numbers"] == "HsmError"
    assert out["untrusted_wrap_AES_KEY_WRAP_PAD"] == "KeyNotWrappable"
    assert out["untrusted_wrap_AES_KEY_WRAP"] == "KeyNotWrappable"
    assert out["make_trusted"] != "ALLOWED"
    assert out["clear_wrap_with_trusted"] != "ALLOWED" and out["make_insensitive"] != "ALLOWED"


def test_token_files_and_pins_are_private(ca: CaHome) -> None:
    for secret in ("token-pin", "token-so-pin"):
        assert (ca.home / "secrets" / secret).stat().st_mode & 0o777 == 0o600
    for role in ("operator", "administrator", "authority", "auditor"):
        assert Path(ca.summary["credentials"][role]["key"]).stat().st_mode & 0o777 == 0o600
    assert (ca.home / "hsm" / "tokens").stat().st_mode & 0o777 == 0o700
    pin = (ca.home / "secrets" / "token-pin").read_text().strip()
    for text_file in [ca.home / "ckms.toml", *(ca.home / "hsm").glob("*.conf")]:
        assert pin not in text_file.read_text()


def test_p384_ca_signs_with_sha384(tmp_path: Path) -> None:
    home = init_home(tmp_path / "p384", "--curve", "P-384")
    ca_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    assert ca_cert.public_key().curve.name == "secp384r1"
    assert isinstance(ca_cert.signature_hash_algorithm, hashes.SHA384)
    operator = x509.load_pem_x509_certificate(home.cred("operator")[0].read_bytes())
    assert isinstance(operator.signature_hash_algorithm, hashes.SHA384)
    operator.verify_directly_issued_by(ca_cert)


def test_external_root_flow(tmp_path: Path) -> None:
    """--csr-out, an external root signs, import-cert completes the CA."""
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from .conftest import ckms

    home = tmp_path / "sub"
    csr_path = tmp_path / "ca.csr"
    out = ckms("ca", "init", "--home", str(home), "--csr-out", str(csr_path), "--json")
    assert json.loads(out.stdout)["status"] == "pending-ca-certificate"
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "External Root")])
    now = dt.datetime.now(dt.UTC)
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    sub = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA384())
    )
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "sub.pem").write_bytes(sub.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    wrong = ckms("ca", "import-cert", "--home", str(home), "--cert", str(tmp_path / "root.pem"), check=False)
    assert wrong.returncode == 1 and "not for this CA's key" in wrong.stderr
    done = json.loads(
        ckms(
            "ca",
            "import-cert",
            "--home",
            str(home),
            "--cert",
            str(tmp_path / "sub.pem"),
            "--chain",
            str(tmp_path / "root.pem"),
            "--demo",
            "--json",
        ).stdout
    )
    assert done["status"] == "ready"
    operator = x509.load_pem_x509_certificate(Path(done["credentials"]["operator"]["cert"]).read_bytes())
    operator.verify_directly_issued_by(sub)
