"""Creating and replacing custody sets: the first split, SO PIN change and re-share (E.22, E.23).

``split`` turns the SO PIN the token was initialised with (``secrets/token-so-pin``, written on the
CA host at token initialisation and read by nobody else) into three sealed shares and destroys the
file: from then on the SO PIN exists only on the token and, split, with the custodians.

``change_so_pin`` and ``reshare`` both start from a secret two custodians rebuilt, draw a new random
SO PIN, set it on the token with C_SetPIN in an SO session and write a new share set (same or new
custodians, new set id). The old shares then rebuild a PIN the token no longer accepts, so a departing
custodian's share is worthless. The key-wrapping key stays the same, so earlier wrapped backups
remain restorable with the new shares. New shares are written and pair-checked before the token is
touched; if the token refuses, they are removed again and the old set stays valid.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckms_app.config import Config
from ckms_app.errors import CustodyError
from ckms_app.hsm import custody
from ckms_app.hsm.admin import AdminToken, token_random, verify_so
from ckms_app.hsm.backup import kwk_fingerprint
from ckms_app.hsm.custody import CustodyRecord, CustodySecret, SealedShare
from ckms_app.hsm.token import read_secret_file

SO_PIN_FILE = Path("secrets") / "token-so-pin"  # relative to the CA home
NEW_SO_PIN_BYTES = 24  # token_urlsafe(24): 32 characters


def so_pin_file(config: Config) -> Path:
    return config.home / SO_PIN_FILE


def _seal_and_write(
    secret: CustodySecret, record: CustodyRecord, passphrases: Sequence[str], out_dir: Path
) -> list[Path]:
    if len(record.custodians) != 3 and record.threshold == 2:
        raise CustodyError("give three custodian names for 2-of-3 custody")
    sealed: list[SealedShare] = custody.split_secret(secret, record, passphrases)
    custody.verify_all_pairs(secret, record, sealed, passphrases)
    paths = [out_dir / f"{name}.share" for name in record.custodians]
    for path in paths:
        if path.exists():
            raise CustodyError(f"{path} exists; a share file is never overwritten")
    for path, share in zip(paths, sealed, strict=True):
        custody.write_share_file(path, share)
    return paths


def split(
    config: Config, names: Sequence[str], passphrases: Sequence[str], out_dir: Path, threshold: int = 2
) -> dict[str, Any]:
    """The first custody set, from the SO PIN file; the file is destroyed once the shares exist."""
    if custody.record_path(config.home).exists():
        raise CustodyError(
            "this CA already has a custody set; use 'ckms hsm custody reshare' or 'ckms hsm change-so-pin'"
        )
    pin_file = so_pin_file(config)
    record = custody.new_record(names, config.token.token_label, threshold)
    secret = CustodySecret(read_secret_file(pin_file), token_random(config, custody.KWK_BYTES))
    verify_so(config, secret)  # the SO PIN is right before anything is destroyed
    paths = _seal_and_write(secret, record, passphrases, out_dir)
    record.save(config.home)
    custody.destroy_file(pin_file)
    return {
        "custody_id": record.custody_id,
        "custodians": list(record.custodians),
        "threshold": f"{record.threshold} of {len(record.custodians)}",
        "shares": [str(p) for p in paths],
        "kwk_id": kwk_fingerprint(secret),
        "so_pin_file": "destroyed",
    }


def replace_set(
    config: Config,
    secret: CustodySecret,
    old: CustodyRecord,
    names: Sequence[str],
    passphrases: Sequence[str],
    out_dir: Path,
) -> dict[str, Any]:
    """New SO PIN on the token and a new share set for ``names``; the old set's record is replaced."""
    new_secret = CustodySecret(secrets.token_urlsafe(NEW_SO_PIN_BYTES), secret.kwk)
    record = custody.new_record(names, config.token.token_label, old.threshold)
    paths = _seal_and_write(new_secret, record, passphrases, out_dir)
    try:
        with AdminToken(config, secret) as adm:
            adm.set_so_pin(new_secret.so_pin)
    except Exception:
        for path in paths:
            custody.destroy_file(path)
        raise
    record.save(config.home)
    return {
        "old_custody_id": old.custody_id,
        "custody_id": record.custody_id,
        "old_custodians": list(old.custodians),
        "new_custodians": list(record.custodians),
        "threshold": f"{record.threshold} of {len(record.custodians)}",
        "shares": [str(p) for p in paths],
        "kwk_id": kwk_fingerprint(new_secret),
        "so_pin": "changed",
    }
