"""Entity passwords for admin CLI actions: scrypt hashes, and reading a password safely.

An administrator (or auditor) proves who they are to the local CLI with a password on top of
holding their credential (A.06, E.05 c). Only a memory-hard hash is stored: scrypt with
N=2^15, r=8, p=1 (32 MiB, ~0.1 s per guess), a 16-byte random salt, parameters kept in the
string so they can be raised later without breaking old hashes. Passwords come from a prompt or
a 0600 file, never from argv, and are never logged.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys
from pathlib import Path

from ckms_app.errors import PasswordError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_LENGTH = 12


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password must have at least {MIN_LENGTH} characters")
    salt = os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; a missing or malformed hash never matches."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def read_password(password_file: Path | None, prompt: str = "password: ") -> str:
    """From a 0600 file (first line) or, without one, an interactive prompt with no echo."""
    if password_file is not None:
        try:
            mode = password_file.stat().st_mode
        except FileNotFoundError:
            raise PasswordError(f"password file {password_file} does not exist") from None
        if mode & 0o077:
            raise PasswordError(
                f"password file {password_file} is readable by group/others "
                f"(mode {mode & 0o777:o}); chmod 600 it"
            )
        lines = password_file.read_text().splitlines()
        if not lines or not lines[0]:
            raise PasswordError(f"password file {password_file} is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise PasswordError("no terminal to ask for the password: pass --password-file FILE (mode 0600)")
    return getpass.getpass(prompt)
