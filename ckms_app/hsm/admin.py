"""HSM administration under 2-of-3 custody: wrapped backup, restore, key generation and destruction
(E.08–E.15, E.22, E.23, A.58, F.54).

Every operation starts from a :class:`~ckms_app.hsm.custody.CustodySecret` rebuilt from two custodians
and logs in to the token as security officer (SO) with it, so the token itself checks the
custodians, not only this code.

The key-wrapping key (KWK)
  A 256-bit AES key drawn from the token's RNG when the custody set is created, and kept only as
  part of the Shamir-shared custody secret. For a backup or restore the SO creates it in the token
  as a *session* object (``CKA_TOKEN=false``) with ``CKA_TRUSTED=true`` (only the SO can set that),
  ``CKA_SENSITIVE=true``, ``CKA_EXTRACTABLE=false``, ``CKA_MODIFIABLE=false``, wrap/unwrap only. It
  disappears when the operation's session closes. The CA key has ``CKA_WRAP_WITH_TRUSTED=true``,
  so no key a user can create wraps it: without two custodians there is no trusted key in the token
  and no backup can be made. Its plaintext exists only inside the token, and for the duration of
  the ceremony in this process's memory (the same exposure as the SO PIN itself).

The backup file (``ckms-hsm-backup/1``, JSON, 0600)
  The CA private key wrapped with CKM_AES_KEY_WRAP_PAD (RFC 5649, whose integrity check the token
  verifies on unwrap), the public key, label, id and curve, and an HMAC-SHA256 over all of it with
  a key derived (HKDF) from the KWK, so the metadata cannot be swapped either. Restoring needs the
  same two-custodian SO login and KWK, unwraps inside the new token with the CA key's attribute
  template, then proves the restored key by a pairwise sign/verify against the CA certificate.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from ckms_app.algorithms import curve_by_name, curve_of
from ckms_app.config import Config
from ckms_app.errors import CustodyError, HsmError
from ckms_app.hsm.custody import CustodySecret
from ckms_app.hsm.token import (
    _PKCS11_CURVE_NAMES,
    _unwrap_octet_string,
    ca_private_key_template,
    ca_public_key_template,
    der_ecdsa_signature,
    pairwise_consistent,
    read_secret_file,
)

KWK_LABEL = "ckms-custody-kwk"


class AdminToken:
    """The token opened for one administrative operation: SO check, session KWK, user session."""

    def __init__(self, config: Config, secret: CustodySecret) -> None:
        self._config = config
        self._secret = secret
        if config.token.softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
        self._holder: Any = None
        try:
            self._lib = pkcs11.lib(config.token.module)
            self._token = self._lib.get_token(token_label=config.token.token_label)
            # Holds the session KWK for the duration of the operation; no login of its own.
            self._holder = self._token.open(rw=True)
        except pkcs11.exceptions.NoSuchToken:
            raise HsmError(f"no PKCS#11 token labelled {config.token.token_label!r}") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"cannot open the token: {type(exc).__name__}") from None
        self._user: Any = None
        self.kwk: Any = None

    def __enter__(self) -> AdminToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for session in (self._user, self._holder):
            if session is not None:
                try:
                    session.close()
                except pkcs11.PKCS11Error:
                    pass
        self._user = None
        self._holder = None

    @property
    def slot_id(self) -> int:
        return int(self._token.slot.slot_id)

    def reopen(self) -> None:
        """After a C_InitToken done outside python-pkcs11: re-read the token and open a new holder
        session (the session KWK went with the old one)."""
        self.close()
        self._lib.reinitialize()
        self._token = self._lib.get_token(token_label=self._config.token.token_label)
        self._holder = self._token.open(rw=True)
        self.kwk = None

    def set_user_pin(self, user_pin: str) -> None:
        """C_InitPIN as SO (after a re-initialisation the token has no user PIN)."""
        try:
            with self._token.open(so_pin=self._secret.so_pin, rw=True) as so:
                so.init_pin(user_pin)
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"setting the user PIN failed: {type(exc).__name__}") from None

    def set_so_pin(self, new_pin: str) -> None:
        """C_SetPIN in an SO session: the old PIN (rebuilt from custodians) authorises the new one."""
        try:
            with self._token.open(so_pin=self._secret.so_pin, rw=True) as so:
                so.set_pin(self._secret.so_pin, new_pin)
        except pkcs11.exceptions.PinIncorrect:
            raise CustodyError("the token refused the SO PIN rebuilt from the custodians' shares") from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"changing the SO PIN failed: {type(exc).__name__}") from None

    def all_objects(self) -> list[Any]:
        """Every token object the user session sees, private ones included (session objects such
        as the KWK are not part of the token)."""
        return list(self._user.get_objects({Attribute.TOKEN: True}))

    def as_security_officer(self, install_kwk: bool) -> None:
        """Log in as SO with the rebuilt PIN (the token checks the custodians) and, if asked,
        create the trusted session KWK; then log out again."""
        try:
            so = self._token.open(so_pin=self._secret.so_pin, rw=True)
        except pkcs11.exceptions.PinIncorrect:
            raise CustodyError(
                "the token refused the SO PIN rebuilt from the custodians' shares "
                "(the token was re-initialised outside custody?)"
            ) from None
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"SO login failed: {type(exc).__name__}") from None
        try:
            if install_kwk:
                self.kwk = self._holder.create_object(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: self._secret.kwk,
                        Attribute.LABEL: KWK_LABEL,
                        Attribute.TOKEN: False,
                        Attribute.PRIVATE: False,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.TRUSTED: True,
                        Attribute.MODIFIABLE: False,
                        Attribute.WRAP: True,
                        Attribute.UNWRAP: True,
                        Attribute.ENCRYPT: False,
                        Attribute.DECRYPT: False,
                        Attribute.SIGN: False,
                        Attribute.VERIFY: False,
                        Attribute.DERIVE: False,
                    }
                )
        finally:
            so.close()  # C_Logout: the SO is logged in only for these lines

    def as_user(self) -> Any:
        pin = read_secret_file(self._config.token.pin_file)
        try:
            self._user = self._token.open(user_pin=pin, rw=True)
        except pkcs11.PKCS11Error as exc:
            raise HsmError(f"user login failed: {type(exc).__name__}") from None
        return self._user

    def find(self, object_class: ObjectClass, label: str) -> Any | None:
        found = list(self._user.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
        if len(found) > 1:
            raise HsmError(f"{len(found)} objects labelled {label!r}; labels must be unique")
        return found[0] if found else None


def require_pairwise(
    private: Any, public_key: ec.EllipticCurvePublicKey, algorithm: hashes.HashAlgorithm
) -> None:
    """A key generated or restored in an SO session must prove its pair before it is used."""
    if not pairwise_consistent(
        lambda digest: der_ecdsa_signature(private.sign(digest, mechanism=Mechanism.ECDSA)),
        public_key,
        algorithm,
    ):
        raise HsmError("the key in the token does not match the CA certificate (pairwise test failed)")


# --- key generation --------------------------------------------------------------
def generate_key(config: Config, secret: CustodySecret, label: str, curve_name: str) -> dict[str, Any]:
    """A new CA key pair (rotation) under custody: the SO login proves two custodians are present."""
    curve = curve_by_name(curve_name)
    with AdminToken(config, secret) as adm:
        adm.as_security_officer(install_kwk=False)
        session = adm.as_user()
        if adm.find(ObjectClass.PRIVATE_KEY, label) is not None:
            raise HsmError(f"a private key labelled {label!r} already exists")
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_PKCS11_CURVE_NAMES[curve.name])},
            local=True,
        )
        public, private = params.generate_keypair(
            store=True,
            label=label,
            id=secrets.token_bytes(16),
            public_template=ca_public_key_template(),
            private_template=ca_private_key_template(),
        )
        point = _unwrap_octet_string(bytes(public[Attribute.EC_POINT]))
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve.crypto_curve, point)
        require_pairwise(private, public_key, curve.hash_algorithm)
    assert curve_of(public_key).name == curve.name
    return {"generated": label, "curve": curve.name}


def verify_so(config: Config, secret: CustodySecret) -> None:
    """The token accepts the rebuilt SO PIN (custody-check, and before anything is destroyed)."""
    with AdminToken(config, secret) as adm:
        adm.as_security_officer(install_kwk=False)


def token_random(config: Config, nbytes: int) -> bytes:
    """Random bytes from the token's RNG (for the KWK), read in a user session."""
    if config.token.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
    lib = pkcs11.lib(config.token.module)
    token = lib.get_token(token_label=config.token.token_label)
    with token.open(user_pin=read_secret_file(config.token.pin_file)) as session:
        return bytes(session.generate_random(nbytes * 8))
