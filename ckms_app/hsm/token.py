"""The CA's signing key, held in a PKCS#11 token (E.08–E.15, A.43).

The private key is generated inside the token with ``CKA_SENSITIVE=true`` and, so that it can be
backed up wrapped, ``CKA_EXTRACTABLE=true`` with ``CKA_WRAP_WITH_TRUSTED=true`` (only a key the
security officer marked trusted can wrap it; see :func:`ca_private_key_template`). The only
operation this module exposes on it is *sign a digest*.
:class:`HsmEcPrivateKey` plugs into pyca/cryptography as an external signer, so certificates and
CRLs are built by cryptography and signed by the token. Every accessor that would reveal key
material raises :class:`~ckms_app.errors.HsmError`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from ckms_app.algorithms import CURVES, Curve, curve_of
from ckms_app.config import TokenConfig
from ckms_app.errors import HsmError

DEFAULT_SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_PKCS11_CURVE_NAMES = {"P-256": "secp256r1", "P-384": "secp384r1"}


def read_secret_file(path: Path) -> str:
    """Read a PIN/passphrase file, refusing one that others can read (secure by default)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise HsmError(f"secret file {path} does not exist") from None
    if st.st_mode & 0o077:
        raise HsmError(
            f"secret file {path} is readable by group/others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    return path.read_text().strip()


def write_secret_file(path: Path, value: str) -> None:
    """Create a 0600 file atomically so the secret is never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def ca_private_key_template() -> dict[Attribute, Any]:
    """Attributes of the CA private key, at generation and when a backup is restored (E.10–E.12).

    ``SENSITIVE`` (one-way: can never be cleared) keeps the value from being read;
    ``EXTRACTABLE`` with ``WRAP_WITH_TRUSTED`` (also one-way) lets the key leave the token only
    wrapped under a key the security officer marked ``CKA_TRUSTED``, which exists only while two
    HSM custodians are present (see :mod:`ckms_app.hsm.admin`). So a plaintext export is
    impossible by token attributes, and a wrapped backup needs 2 of 3 custodians.

    ``DESTROYABLE=false`` and ``MODIFIABLE=false`` take the key out of the user PIN's reach: the
    daemon's PIN (a file on the host) can sign with it but can neither delete it nor change its
    label or usage. Destroying it means re-initialising the token with the SO PIN, which only two
    custodians together can rebuild (:mod:`ckms_app.hsm.zeroise`).
    """
    return {
        Attribute.SIGN: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.WRAP_WITH_TRUSTED: True,
        Attribute.PRIVATE: True,
        Attribute.TOKEN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
        Attribute.DESTROYABLE: False,
        Attribute.MODIFIABLE: False,
    }


def ca_public_key_template() -> dict[Attribute, Any]:
    """The public half is protected the same way: deleting or relabelling it would make the CA
    key unusable (a denial of service with the user PIN alone)."""
    return {
        Attribute.VERIFY: True,
        Attribute.TOKEN: True,
        Attribute.DESTROYABLE: False,
        Attribute.MODIFIABLE: False,
    }


class Token:
    """A logged-in read/write session on the CA token.

    One instance per process. PKCS#11 sessions are not safe for concurrent use, so a lock
    serialises operations; the daemon's event loop makes contention rare anyway.
    """

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        if config.softhsm_conf is not None:
            # SoftHSM reads its configuration at C_Initialize; it must be set before loading.
            os.environ["SOFTHSM2_CONF"] = str(config.softhsm_conf)
        pin = read_secret_file(config.pin_file)
        try:
            self._lib = pkcs11.lib(config.module)
            self._token = self._open_token(config.token_label)
            self._session = self._token.open(user_pin=pin, rw=True)
        except pkcs11.exceptions.NoSuchToken:
            raise HsmError(f"no PKCS#11 token labelled {config.token_label!r} in {config.module}") from None
        except pkcs11.exceptions.PinIncorrect:
            raise HsmError(f"the token {config.token_label!r} refused the PIN") from None
        except pkcs11.exceptions.PinLocked:
            raise HsmError(f"the token {config.token_label!r} is locked (too many wrong PINs)") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot open token {config.token_label!r}: {type(exc).__name__} {exc}") from None
        self._lock = threading.Lock()

    def _open_token(self, label: str, attempts: int = 20) -> Any:
        """Find the token, rescanning briefly if it is missing or unreadable.

        A file-backed token (SoftHSM) is skipped at C_Initialize while a sibling worker process is
        rewriting its store (e.g. creating a key), so a worker starting at that moment would not see
        it; re-initialising the library a few times over ~1 s rides that out.
        """
        for attempt in range(attempts):
            try:
                return self._lib.get_token(token_label=label)
            except (pkcs11.exceptions.NoSuchToken, pkcs11.exceptions.GeneralError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05)
                self._lib.reinitialize()
        raise AssertionError("unreachable")

    def close(self) -> None:
        try:
            self._session.close()
        except pkcs11.PKCS11Error:
            pass

    @property
    def slot_id(self) -> int:
        """The PKCS#11 slot of the session, named in the audit trail's ``hsm.session.*`` records (F.08)."""
        return int(self._token.slot.slot_id)

    def is_alive(self) -> bool:
        """Cheap liveness probe for health checks: the session still answers the token."""
        try:
            with self._lock:
                self._token.slot.get_token()
            return True
        except pkcs11.PKCS11Error:
            return False

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate_ec_key(self, label: str, curve: Curve) -> HsmEcPrivateKey:
        """Generate a sensitive EC key pair inside the token, exportable only wrapped by a trusted key."""
        if self._find(ObjectClass.PRIVATE_KEY, label) is not None:
            raise HsmError(f"a private key labelled {label!r} already exists in the token")
        key_id = secrets.token_bytes(16)
        with self._lock:
            params = self._session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_PKCS11_CURVE_NAMES[curve.name])},
                local=True,
            )
            params.generate_keypair(
                store=True,
                label=label,
                id=key_id,
                public_template=ca_public_key_template(),
                private_template=ca_private_key_template(),
            )
        return self.load_ec_key(label)

    def _find(self, object_class: ObjectClass, label: str) -> Any | None:
        with self._lock:
            found = list(self._session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
        if len(found) > 1:
            raise HsmError(f"{len(found)} objects labelled {label!r} in the token; labels must be unique")
        return found[0] if found else None

    def load_ec_key(self, label: str) -> HsmEcPrivateKey:
        private = self._find(ObjectClass.PRIVATE_KEY, label)
        public = self._find(ObjectClass.PUBLIC_KEY, label)
        if private is None or public is None:
            raise HsmError(f"no EC key pair labelled {label!r} in token {self.config.token_label!r}")
        with self._lock:
            ec_point = public[Attribute.EC_POINT]
        # CKA_EC_POINT is a DER OCTET STRING around the X9.62 point.
        point = _unwrap_octet_string(ec_point)
        for curve in CURVES.values():
            try:
                public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve.crypto_curve, point)
            except ValueError:
                continue
            return HsmEcPrivateKey(self, private, public_key, label)
        raise HsmError(f"key {label!r} is not on a supported curve")

    def private_key_attributes(self, label: str) -> dict[str, Any]:
        """Security attributes of a private key, for self-checks and reports."""
        private = self._find(ObjectClass.PRIVATE_KEY, label)
        if private is None:
            raise HsmError(f"no private key labelled {label!r}")
        with self._lock:
            return {
                "sensitive": bool(private[Attribute.SENSITIVE]),
                "extractable": bool(private[Attribute.EXTRACTABLE]),
                "always_sensitive": bool(private[Attribute.ALWAYS_SENSITIVE]),
                "never_extractable": bool(private[Attribute.NEVER_EXTRACTABLE]),
                "local": bool(private[Attribute.LOCAL]),
                "wrap_with_trusted": bool(private[Attribute.WRAP_WITH_TRUSTED]),
            }

    def read_private_value(self, label: str) -> bytes:
        """Ask the token for the raw private scalar. A compliant token refuses; this exists so a
        test can prove that it does (E.12–E.15)."""
        private = self._find(ObjectClass.PRIVATE_KEY, label)
        if private is None:
            raise HsmError(f"no private key labelled {label!r}")
        with self._lock:
            return bytes(private[Attribute.VALUE])

    def sign_digest(self, private: Any, digest: bytes) -> bytes:
        try:
            with self._lock:
                raw = private.sign(digest, mechanism=Mechanism.ECDSA)
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"the token refused to sign: {type(exc).__name__}") from None
        return der_ecdsa_signature(raw)


def der_ecdsa_signature(raw: bytes) -> bytes:
    """PKCS#11's ECDSA signature (r || s, each the size of the order) as the DER ECDSA-Sig-Value X.509
    carries. cryptography's encoder, not python-pkcs11's asn1crypto one: this runs on every signature,
    and the latter costs more than a third of SoftHSM's own signing time."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def pairwise_consistent(
    sign_digest: Callable[[bytes], bytes],
    public_key: ec.EllipticCurvePublicKey,
    hash_algorithm: hashes.HashAlgorithm,
) -> bool:
    """The pairwise consistency test (E.35): the token signs a fresh message's digest and the public key
    that should belong to the private key verifies it. Used by the self-tests and by every restore and key
    generation under custody."""
    message = b"ckms pairwise consistency test " + secrets.token_bytes(16)
    try:
        public_key.verify(
            sign_digest(hashlib.new(hash_algorithm.name, message).digest()), message, ec.ECDSA(hash_algorithm)
        )
    except InvalidSignature:
        return False
    return True


def _unwrap_octet_string(der: bytes) -> bytes:
    if not der or der[0] != 0x04:
        return der
    length = der[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[2 : 2 + n], "big")
        offset = 2 + n
    return der[offset : offset + length]


class HsmEcPrivateKey(ec.EllipticCurvePrivateKey):
    """An EC private key that lives in the token: it can sign and nothing else.

    pyca/cryptography calls :meth:`sign` with the to-be-signed bytes; the digest is computed here
    and only the digest goes to the token (SoftHSM offers plain CKM_ECDSA, not CKM_ECDSA_SHA256).
    """

    def __init__(self, token: Token, handle: Any, public_key: ec.EllipticCurvePublicKey, label: str) -> None:
        self._token = token
        self._handle = handle
        self._public_key = public_key
        self.label = label
        self.curve_info = curve_of(public_key)

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        algorithm = signature_algorithm.algorithm
        if not isinstance(algorithm, hashes.HashAlgorithm):
            raise HsmError("prehashed input is not accepted by the CA signer")
        digest = hashlib.new(algorithm.name, data).digest()
        return self._token.sign_digest(self._handle, digest)

    def sign_digest(self, digest: bytes) -> bytes:
        """A DER ECDSA signature over a digest the caller computed (pairwise tests)."""
        return self._token.sign_digest(self._handle, digest)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise HsmError("the CA key is for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise HsmError("the CA private key never leaves the token")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise HsmError("the CA private key never leaves the token")

    def __copy__(self) -> HsmEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmEcPrivateKey:
        return self
