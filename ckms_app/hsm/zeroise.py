"""Destroying a key that nobody can destroy: re-initialising the token under custody (E.11, E.22).

The CA key and the audit sealing key are created with ``CKA_DESTROYABLE=false`` and
``CKA_MODIFIABLE=false``, so no session — user or SO — can delete or alter them one by one. The only
way to remove one is ``C_InitToken``, which the token allows only with the SO PIN (rebuilt from two
custodians' shares) and which erases *every* object. To destroy one retired key and keep the others,
the other key pairs are first wrapped under the custody KWK (as in a backup), the token is
re-initialised with the same SO PIN and label, the daemon's user PIN is set again from its PIN file,
and the kept keys are unwrapped back with their templates and pairwise-tested.

While the token is being rebuilt the kept keys exist only wrapped: in memory and in a rescue file
(``hsm/zeroise-rescue.backup``, a normal MAC-protected backup, useless without two custodians) that
is removed once every key is back. If the process dies in between, restore that file with
``ckms hsm restore``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass

from ckms_app.config import Config
from ckms_app.errors import HsmError
from ckms_app.hsm.admin import AdminToken
from ckms_app.hsm.backup import (
    _write_exclusive,
    restore_entries,
    sealed_body,
    wrap_entry,
)
from ckms_app.hsm.custody import CustodySecret, destroy_file
from ckms_app.hsm.softhsm import reinit_token
from ckms_app.hsm.token import read_secret_file

RESCUE_NAME = "zeroise-rescue.backup"  # under <home>/hsm/


def rescue_path(config: Config) -> Path:
    return config.home / "hsm" / RESCUE_NAME


def in_use_labels(config: Config) -> set[str]:
    """Keys the running CA needs: destroying one stops the CA, so it takes ``--retire-current``."""
    return {config.ca_key_label, config.audit.key_label}


def _plan(adm: AdminToken, label: str) -> list[str]:
    """Labels of the key pairs to carry over; refuses a token holding anything that cannot be carried."""
    private: dict[str, Any] = {}
    public: set[str] = set()
    others: list[str] = []
    for obj in adm.all_objects():
        cls, name = obj[Attribute.CLASS], str(obj[Attribute.LABEL])
        if cls == ObjectClass.PRIVATE_KEY and obj[Attribute.KEY_TYPE] == KeyType.EC:
            private[name] = obj
        elif cls == ObjectClass.PUBLIC_KEY and obj[Attribute.KEY_TYPE] == KeyType.EC:
            public.add(name)
        else:
            others.append(f"{cls.name.lower()} {name!r}")
    if label not in private and label not in public:
        raise HsmError(f"no key labelled {label!r} in the token")
    kept = sorted(n for n in private if n != label)
    for name in kept:
        obj = private[name]
        if not (bool(obj[Attribute.EXTRACTABLE]) and bool(obj[Attribute.WRAP_WITH_TRUSTED])):
            others.append(f"non-extractable private key {name!r}")
        if name not in public:
            others.append(f"private key {name!r} without its public key")
    others += [f"public key {n!r} without its private key" for n in public - set(private) - {label}]
    if others:
        raise HsmError(
            "the token holds objects that cannot be carried over a re-initialisation: "
            + ", ".join(others)
            + "; nothing was changed"
        )
    return kept


def _write_rescue(
    config: Config, secret: CustodySecret, entries: list[dict[str, Any]], custody_id: str
) -> Path:
    path = rescue_path(config)
    if path.exists():
        raise HsmError(
            f"{path} exists: an earlier destroy-key was interrupted; restore its keys with "
            "'ckms hsm restore' into a fresh token, then remove it"
        )
    body = sealed_body(
        config,
        secret,
        custody_id,
        entries,
        purpose="keys kept while the token is re-initialised by 'ckms hsm destroy-key'",
    )
    _write_exclusive(path, json.dumps(body, indent=2) + "\n")
    return path


def destroy_key(
    config: Config, secret: CustodySecret, label: str, custody_id: str, retire_current: bool
) -> dict[str, Any]:
    """Destroy one key pair by re-initialising the token and restoring every other key pair."""
    if label in in_use_labels(config) and not retire_current:
        raise HsmError(
            f"{label!r} is a key this CA uses now (CA or audit key); destroying it stops the CA. "
            "Give --retire-current if that is intended"
        )
    user_pin = read_secret_file(config.token.pin_file)
    with AdminToken(config, secret) as adm:
        adm.as_security_officer(install_kwk=True)
        adm.as_user()
        kept = _plan(adm, label)
        entries = [wrap_entry(adm, name) for name in kept]
        slot_id = adm.slot_id
        rescue = _write_rescue(config, secret, entries, custody_id)
        adm.close()  # C_InitToken refuses while any session is open
        reinit_token(config.token.module, slot_id, config.token.token_label, secret.so_pin)
        adm.reopen()
        adm.set_user_pin(user_pin)
        adm.as_security_officer(install_kwk=True)
        restore_entries(adm, adm.as_user(), entries)
    destroy_file(rescue)
    return {"destroyed": label, "kept": kept, "token_reinitialised": True}
