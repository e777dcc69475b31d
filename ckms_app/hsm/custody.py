"""2-of-3 custody of the HSM administrator credential and the key-wrapping key (E.22, E.23, E.11).

What is shared: one *custody secret* = the token's security-officer (SO) PIN and the 256-bit
key-wrapping key (KWK) that protects CA-key backups. It is split with Shamir's scheme
(:mod:`ckms_app.hsm.shamir`, 2 of 3 by default) and each share is sealed for one custodian:
AES-256-GCM under a key derived from the custodian's passphrase with scrypt (memory-hard), the
share's header as associated data. A custodian carries the share file (e.g. on a USB stick) and
knows the passphrase; the CA home keeps only a public record (``hsm/custody.json``: set id,
custodian names, threshold).

Any HSM administration rebuilds the custody secret in memory from two unsealed shares for that
one operation; one share is refused. A wrong passphrase or an altered share file fails the GCM
check; a share from another set or a corrupted one fails the Shamir integrity tag.

Passphrases come from prompts or 0600 files, never from argv, the environment or a log.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ckms_app.errors import CustodyError, ShamirError
from ckms_app.hsm import shamir
from ckms_app.hsm.token import read_secret_file

SHARE_FORMAT = "ckms-custody-share/1"
RECORD_NAME = "custody.json"  # under <home>/hsm/
KWK_BYTES = 32
SO_PIN_MAX = 64
MIN_PASSPHRASE = 12
# scrypt at 2^15 x 8 uses 32 MiB and ~0.1 s per unseal: memory-hard against offline guessing of a
# stolen share file, still quick for a person at a ceremony.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


@dataclass(frozen=True, repr=False)
class CustodySecret:
    """The SO PIN and the KWK value. Lives only in memory during one administrative operation."""

    so_pin: str
    kwk: bytes

    def __repr__(self) -> str:  # never print the secret by accident
        return "CustodySecret(<redacted>)"

    def encode(self) -> bytes:
        pin = self.so_pin.encode()
        if not 4 <= len(pin) <= SO_PIN_MAX:
            raise CustodyError(f"the SO PIN must be 4..{SO_PIN_MAX} bytes")
        if len(self.kwk) != KWK_BYTES:
            raise CustodyError(f"the KWK must be {KWK_BYTES} bytes")
        # Fixed length, so a share's size says nothing about the PIN's length.
        return b"\x01" + bytes([len(pin)]) + pin.ljust(SO_PIN_MAX, b"\x00") + self.kwk

    @classmethod
    def decode(cls, data: bytes) -> CustodySecret:
        if len(data) != 2 + SO_PIN_MAX + KWK_BYTES or data[0] != 1 or not 4 <= data[1] <= SO_PIN_MAX:
            raise CustodyError("the rebuilt custody secret is malformed")
        return cls(data[2 : 2 + data[1]].decode(), data[2 + SO_PIN_MAX :])


@dataclass(frozen=True)
class CustodyRecord:
    """The public description of a custody set, kept in the CA home."""

    custody_id: str
    threshold: int
    custodians: tuple[str, ...]
    created_at: str
    token_label: str

    @classmethod
    def load(cls, home: Path) -> CustodyRecord:
        path = record_path(home)
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise CustodyError(f"no custody set in {home}: run 'ckms hsm custody split' first") from None

    @classmethod
    def from_json(cls, text: str) -> CustodyRecord:
        """The record as ``hsm/custody.json`` holds it (also read by the lab checks on the controller)."""
        raw = json.loads(text)
        return cls(
            raw["custody_id"],
            int(raw["threshold"]),
            tuple(raw["custodians"]),
            raw["created_at"],
            raw["token_label"],
        )

    def save(self, home: Path) -> None:
        path = record_path(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, default=list) + "\n")
        os.replace(tmp, path)


def record_path(home: Path) -> Path:
    return home / "hsm" / RECORD_NAME


@dataclass(frozen=True)
class SealedShare:
    """A share file's content: a header in clear and the share sealed under the passphrase."""

    header: dict[str, Any]
    nonce: bytes
    ciphertext: bytes

    @property
    def custodian(self) -> str:
        return str(self.header["custodian"])

    @property
    def custody_id(self) -> str:
        return str(self.header["custody_id"])

    def to_json(self) -> str:
        return (
            json.dumps(
                {**self.header, "nonce": _b64(self.nonce), "ciphertext": _b64(self.ciphertext)}, indent=2
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> SealedShare:
        try:
            raw = json.loads(text)
            if raw.get("format") != SHARE_FORMAT:
                raise CustodyError(f"{where} is not a ckms custody share ({SHARE_FORMAT})")
            nonce, ciphertext = base64.b64decode(raw.pop("nonce")), base64.b64decode(raw.pop("ciphertext"))
            for key in ("custody_id", "custodian", "index", "threshold", "shares", "kdf"):
                raw[key]  # noqa: B018 - presence check
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CustodyError(f"{where} is not a readable custody share file") from None
        return cls(raw, nonce, ciphertext)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise CustodyError(f"unsupported share KDF {kdf.get('name')!r}")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    return hashlib.scrypt(
        passphrase.encode(),
        salt=base64.b64decode(kdf["salt"]),
        n=n,
        r=r,
        p=p,
        maxmem=n * r * 128 * 2 + 1024 * 1024,
        dklen=32,
    )


def seal(
    share: shamir.Share, *, custody_id: str, custodian: str, shares: int, passphrase: str
) -> SealedShare:
    if len(passphrase) < MIN_PASSPHRASE:
        raise CustodyError(
            f"custodian {custodian}: the passphrase must have at least {MIN_PASSPHRASE} characters"
        )
    kdf = {
        "name": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64(secrets.token_bytes(16)),
    }
    header = {
        "format": SHARE_FORMAT,
        "custody_id": custody_id,
        "custodian": custodian,
        "index": share.index,
        "threshold": share.threshold,
        "shares": shares,
        "kdf": kdf,
    }
    nonce = secrets.token_bytes(12)
    ciphertext = AESGCM(_derive(passphrase, kdf)).encrypt(nonce, share.value, _aad(header))
    return SealedShare(header, nonce, ciphertext)


def unseal(sealed: SealedShare, passphrase: str) -> shamir.Share:
    """Open a share with its custodian's passphrase; a wrong passphrase or an edited file fails."""
    try:
        value = AESGCM(_derive(passphrase, sealed.header["kdf"])).decrypt(
            sealed.nonce, sealed.ciphertext, _aad(sealed.header)
        )
    except (InvalidTag, ValueError):
        raise CustodyError(f"custodian {sealed.custodian}: wrong passphrase or altered share file") from None
    try:
        return shamir.Share(int(sealed.header["index"]), int(sealed.header["threshold"]), value)
    except ShamirError as exc:
        raise CustodyError(f"custodian {sealed.custodian}: {exc}") from None


def split_secret(
    secret: CustodySecret, record: CustodyRecord, passphrases: Sequence[str]
) -> list[SealedShare]:
    """Split and seal: one :class:`SealedShare` per custodian, in the record's order."""
    names = record.custodians
    if len(set(names)) != len(names) or len(names) < record.threshold:
        raise CustodyError("custodian names must be distinct and at least as many as the threshold")
    if len(passphrases) != len(names):
        raise CustodyError("one passphrase per custodian is needed")
    if len(set(passphrases)) != len(passphrases):
        raise CustodyError("every custodian needs their own passphrase (two are the same)")
    parts = shamir.split(secret.encode(), record.threshold, len(names))
    return [
        seal(part, custody_id=record.custody_id, custodian=name, shares=len(names), passphrase=pp)
        for part, name, pp in zip(parts, names, passphrases, strict=True)
    ]


def new_record(custodians: Sequence[str], token_label: str, threshold: int = 2) -> CustodyRecord:
    for name in custodians:
        if not name or not all(c.isalnum() or c in "._-" for c in name) or len(name) > 64:
            raise CustodyError(f"custodian name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return CustodyRecord(
        secrets.token_hex(16),
        threshold,
        tuple(custodians),
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        token_label,
    )


@dataclass(frozen=True)
class Credential:
    """One custodian's share file and passphrase, as presented for an operation."""

    sealed: SealedShare
    passphrase: str = ""

    def __repr__(self) -> str:
        return f"Credential({self.sealed.custodian})"


def reconstruct(record: CustodyRecord, credentials: Sequence[Credential]) -> tuple[CustodySecret, list[str]]:
    """Rebuild the custody secret from at least ``threshold`` custodians; returns it and who took part.

    Raises :class:`CustodyError` naming the problem: too few custodians, a share of another set,
    the same custodian twice, a wrong passphrase, or shares that do not rebuild a valid secret.
    """
    names = [c.sealed.custodian for c in credentials]
    for c in credentials:
        if c.sealed.custody_id != record.custody_id:
            raise CustodyError(f"custodian {c.sealed.custodian}: the share belongs to another custody set")
        if c.sealed.custodian not in record.custodians:
            raise CustodyError(f"{c.sealed.custodian} is not a registered custodian")
    if len(set(names)) != len(names):
        raise CustodyError("the same custodian was presented twice; two different custodians are needed")
    if len(credentials) < record.threshold:
        raise CustodyError(
            f"{len(credentials)} custodian credential(s) given; HSM administration needs "
            f"{record.threshold} of {len(record.custodians)}"
        )
    parts = [unseal(c.sealed, c.passphrase) for c in credentials]
    try:
        payload = shamir.combine(parts)
    except ShamirError as exc:
        raise CustodyError(str(exc)) from None
    return CustodySecret.decode(payload), sorted(names)


def verify_all_pairs(
    secret: CustodySecret, record: CustodyRecord, sealed: Sequence[SealedShare], passphrases: Sequence[str]
) -> None:
    """Before anything is replaced: every pair of the new shares rebuilds the secret."""
    for i in range(len(sealed)):
        for j in range(i + 1, len(sealed)):
            pair = [Credential(sealed[i], passphrases[i]), Credential(sealed[j], passphrases[j])]
            if reconstruct(record, pair)[0] != secret:
                raise CustodyError("self-check of the new shares failed; nothing was changed")


# --- where credentials come from ----------------------------------------------------------------
Prompt = Callable[[str], str]


def read_share_file(path: Path) -> SealedShare:
    return SealedShare.from_json(path.read_text(), str(path))


def gather_credentials(
    share_files: Sequence[Path],
    passphrase_files: Sequence[Path],
    prompt: Prompt = getpass.getpass,
    prompt_text: str = "passphrase of custodian {custodian} (share {index}): ",
) -> list[Credential]:
    """Pair ``--share-file`` i with ``--passphrase-file`` i; prompt (no echo) for any passphrase missing.

    ``prompt_text`` (fields ``custodian``, ``index``) is the caller's, in the person's language."""
    if len(passphrase_files) > len(share_files):
        raise CustodyError("more --passphrase-file than --share-file arguments")
    creds = []
    for i, path in enumerate(share_files):
        sealed = read_share_file(path)
        if i < len(passphrase_files):
            passphrase = read_secret_file(passphrase_files[i])
        else:
            passphrase = prompt(prompt_text.format(custodian=sealed.custodian, index=sealed.header["index"]))
        creds.append(Credential(sealed, passphrase))
    return creds


def write_share_file(path: Path, sealed: SealedShare) -> None:
    """0600, created exclusively: a share file is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CustodyError(f"{path} exists; a share file is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(sealed.to_json())


def destroy_file(path: Path) -> None:
    """Overwrite then unlink a plaintext secret file (best effort on journalling/flash storage)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    with open(path, "r+b") as f:
        f.write(secrets.token_bytes(max(size, 64)))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
