"""Wrapped backup and restore of the token's keys under 2-of-3 custody (E.22, E.23, F.49, A.58).

The CA and audit keys leave the token only wrapped under a key-wrapping key (KWK) that the token
trusts, inside a security-officer session that two custodians opened together; the backup file
carries a MAC and the KWK fingerprint. Restore unwraps into a fresh token, sets the keys' attributes
(sensitive, non-extractable) and proves each key pair with a pairwise test."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.constants import DEFAULT

from ckms_app.algorithms import Curve, curve_by_name
from ckms_app.config import Config
from ckms_app.errors import CustodyError, HsmError
from ckms_app.hsm.admin import AdminToken, require_pairwise
from ckms_app.hsm.custody import CustodySecret
from ckms_app.hsm.softhsm import provision_softhsm_token
from ckms_app.hsm.token import (
    _unwrap_octet_string,
    ca_private_key_template,
    read_secret_file,
    write_secret_file,
)

BACKUP_FORMAT = "ckms-hsm-backup/1"


WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD


# --- backup --------------------------------------------------------------------------------------
def _mac_key(secret: CustodySecret) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"ckms hsm backup mac v1").derive(secret.kwk)


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in body.items() if k != "mac"}, sort_keys=True, separators=(",", ":")
    ).encode()


def kwk_fingerprint(secret: CustodySecret) -> str:
    """A public identifier of the KWK (not a check value that helps guessing: HKDF output)."""
    return HKDF(hashes.SHA256(), 8, salt=None, info=b"ckms kwk id v1").derive(secret.kwk).hex()


def sealed_body(
    config: Config, secret: CustodySecret, custody_id: str, keys: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A backup document (``ckms-hsm-backup/1``) for wrapped ``keys``, with its KWK-derived MAC over all
    of it; one shape for the custody backup and destroy-key's rescue file."""
    body: dict[str, Any] = {
        "format": BACKUP_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "custody_id": custody_id,
        "kwk_id": kwk_fingerprint(secret),
        "token_label": config.token.token_label,
        "ca_key_label": config.ca_key_label,
        "mechanism": "CKM_AES_KEY_WRAP_PAD",
        "keys": keys,
        "ca_cert_pem": config.ca_cert.read_text() if config.ca_cert.exists() else None,
        **extra,
    }
    body["mac"] = hmac.new(_mac_key(secret), _canonical(body), hashlib.sha256).hexdigest()
    return body


def backup(config: Config, secret: CustodySecret, out: Path, custody_id: str) -> dict[str, Any]:
    """Wrap the CA key, and every other key pair in the token that allows wrapping by a trusted key
    (e.g. the audit sealing key), into one backup file."""
    with AdminToken(config, secret) as adm:
        adm.as_security_officer(install_kwk=True)
        session = adm.as_user()
        labels = [config.ca_key_label]
        for obj in session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC}
        ):
            other = str(obj[Attribute.LABEL])
            if (
                other not in labels
                and bool(obj[Attribute.WRAP_WITH_TRUSTED])
                and bool(obj[Attribute.EXTRACTABLE])
            ):
                labels.append(other)
        keys = [wrap_entry(adm, label) for label in labels]
    body = sealed_body(config, secret, custody_id, keys)
    _write_exclusive(out, json.dumps(body, indent=2) + "\n")
    return {"backup": str(out), "keys": [k["label"] for k in keys], "kwk_id": body["kwk_id"]}


def wrap_entry(adm: AdminToken, label: str) -> dict[str, Any]:
    """One key pair as a backup entry: the private key wrapped under the session KWK (the SO must
    have installed it), the public key in clear."""
    private, public = adm.find(ObjectClass.PRIVATE_KEY, label), adm.find(ObjectClass.PUBLIC_KEY, label)
    if private is None or public is None:
        raise HsmError(f"no key pair labelled {label!r} to back up")
    try:
        wrapped = adm.kwk.wrap_key(private, mechanism=WRAP_MECHANISM)
    except pkcs11.exceptions.KeyUnextractable:
        raise HsmError(
            f"key {label!r} was generated non-extractable; it cannot be backed up even wrapped "
            "(generate a new key with 'ckms hsm keygen')"
        ) from None
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"the token refused to wrap key {label!r}: {type(exc).__name__}") from None
    ec_point = bytes(public[Attribute.EC_POINT])
    return {
        "label": label,
        "id": bytes(private[Attribute.ID]).hex(),
        "curve": _curve_of_point(_unwrap_octet_string(ec_point)),
        "ec_params": base64.b64encode(bytes(public[Attribute.EC_PARAMS])).decode(),
        "ec_point": base64.b64encode(ec_point).decode(),
        "wrapped_private_key": base64.b64encode(wrapped).decode(),
    }


def entry_public_key(entry: dict[str, Any]) -> tuple[Curve, ec.EllipticCurvePublicKey]:
    curve = curve_by_name(entry["curve"])
    point = _unwrap_octet_string(base64.b64decode(entry["ec_point"]))
    return curve, ec.EllipticCurvePublicKey.from_encoded_point(curve.crypto_curve, point)


def restore_entries(adm: AdminToken, session: Any, entries: list[dict[str, Any]]) -> None:
    """Unwrap each entry into the token with the CA key template and prove it with a pairwise test."""
    for entry in entries:
        curve, public_key = entry_public_key(entry)
        _restore_one(adm, session, entry, public_key, curve.hash_algorithm)


def _curve_of_point(point: bytes) -> str:
    for name, crv in (("P-256", ec.SECP256R1()), ("P-384", ec.SECP384R1())):
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(crv, point)
            return name
        except ValueError:
            continue
    raise HsmError("the key is not on a supported curve")


def _write_exclusive(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise HsmError(f"{path} exists; choose a new file name") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_backup(path: Path, secret: CustodySecret) -> dict[str, Any]:
    """Parse and authenticate a backup file (E.09: an altered backup is refused)."""
    try:
        body = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise HsmError(f"{path} is not a ckms HSM backup") from None
    if not isinstance(body, dict) or body.get("format") != BACKUP_FORMAT:
        raise HsmError(f"{path} is not a {BACKUP_FORMAT} file")
    if body.get("kwk_id") != kwk_fingerprint(secret):
        raise CustodyError("the backup was made under another custody set's key-wrapping key")
    expected = hmac.new(_mac_key(secret), _canonical(body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(str(body.get("mac", "")), expected):
        raise HsmError("the backup file was altered (MAC mismatch); refusing to restore it")
    return body


# --- restore ------------------------------------------------------------------------------------
def restore(config: Config, secret: CustodySecret, infile: Path, token_dir: Path | None) -> dict[str, Any]:
    """Restore the CA key into a fresh token (SoftHSM: a new token directory) and prove it signs."""
    body = read_backup(infile, secret)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    entries = body.get("keys") or []
    publics = {entry["label"]: entry_public_key(entry) for entry in entries}
    if config.ca_key_label not in publics or publics[config.ca_key_label][1] != ca_cert.public_key():
        raise HsmError("the backup does not hold this CA certificate's key")
    softhsm_conf = _softhsm_conf(config, token_dir)
    if softhsm_conf is not None:
        token_dir = token_dir or config.home / "hsm" / f"tokens-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        if token_dir.exists() and any(token_dir.iterdir()):
            raise HsmError(f"{token_dir} is not empty; restore goes into a fresh token")
        try:
            user_pin = read_secret_file(config.token.pin_file)
        except HsmError:
            user_pin = secrets.token_urlsafe(18)
            write_secret_file(config.token.pin_file, user_pin)
        provision_softhsm_token(
            config.token.module,
            softhsm_conf,
            token_dir,
            config.token.token_label,
            secret.so_pin,
            user_pin,
        )
    with AdminToken(config, secret) as adm:
        adm.as_security_officer(install_kwk=True)
        restore_entries(adm, adm.as_user(), entries)
    return {
        "restored": [e["label"] for e in entries],
        "token_label": config.token.token_label,
        "token_dir": str(token_dir) if token_dir else None,
        "pairwise_test": "passed",
    }


def _softhsm_conf(config: Config, token_dir: Path | None) -> Path | None:
    """The SoftHSM configuration a fresh token is provisioned under: the home's own (``ca init`` without
    ``--pin-file``), or, for a deployed CA whose token hsm_client set up, the ``SOFTHSM2_CONF`` of the
    caller when ``--token-dir`` is given (a spare node or a scratch restore)."""
    if config.token.softhsm_conf is not None:
        return config.token.softhsm_conf
    env = os.environ.get("SOFTHSM2_CONF")
    if token_dir is not None and env and "softhsm" in config.token.module:
        return Path(env)
    return None


def _restore_one(
    adm: AdminToken,
    session: Any,
    body: dict[str, Any],
    public_key: ec.EllipticCurvePublicKey,
    algorithm: hashes.HashAlgorithm,
) -> None:
    label = body["label"]
    if adm.find(ObjectClass.PRIVATE_KEY, label) is not None:
        raise HsmError(f"the token already holds a key labelled {label!r}; restore goes into a fresh token")
    key_id = bytes.fromhex(body["id"])
    template = {
        **ca_private_key_template(),
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        # python-pkcs11 adds every capability attribute; EC private keys take none of these.
        Attribute.ENCRYPT: DEFAULT,
        Attribute.VERIFY: DEFAULT,
        Attribute.WRAP: DEFAULT,
    }
    try:
        private = adm.kwk.unwrap_key(
            ObjectClass.PRIVATE_KEY,
            KeyType.EC,
            base64.b64decode(body["wrapped_private_key"]),
            label=label,
            id=key_id,
            store=True,
            mechanism=WRAP_MECHANISM,
            template=template,
        )
    except pkcs11.PKCS11Error as exc:
        raise HsmError(
            f"the token refused to unwrap the backup ({type(exc).__name__}): "
            "wrong key-wrapping key or a damaged backup"
        ) from None
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: True,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
            Attribute.VERIFY: True,
            Attribute.PRIVATE: False,
            Attribute.DESTROYABLE: False,
            Attribute.MODIFIABLE: False,
            Attribute.EC_PARAMS: base64.b64decode(body["ec_params"]),
            Attribute.EC_POINT: base64.b64decode(body["ec_point"]),
        }
    )
    require_pairwise(private, public_key, algorithm)
