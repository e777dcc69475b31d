#!/usr/bin/env python3
"""The GRUB superuser's password hash as grub-mkpasswd-pbkdf2 prints it, without GRUB on the machine.

  scripts/grub-pbkdf2.py < FILE             the hash of FILE's first line (the password, without its newline)
  scripts/grub-pbkdf2.py --new-password FILE
                                            a new random password into FILE (mode 0600; an existing non-empty
                                            FILE is kept), then the hash of the password in FILE

The output is one line, grub.pbkdf2.sha512.<iterations>.<salt>.<hash>: what os_hardening's bootloader concern takes
as os_hardening_bootloader_password_hash (from the vault: vault_os_hardening_bootloader_password_hash). As
grub-mkpasswd-pbkdf2 (grub-common) makes it: PBKDF2-HMAC-SHA512 over the password's bytes, 10000 iterations, a
64-byte random salt and a 64-byte result, both in upper-case hexadecimal. The password never appears on a
command line. scripts/lab-converge.sh makes the lab's this way; tests/unit/test_grub_pbkdf2.py checks the format.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
from pathlib import Path

ITERATIONS = 10000  # grub-mkpasswd-pbkdf2 --iteration-count default
SALT_BYTES = 64  # --salt default
HASH_BYTES = 64  # --buflen default
FORMAT = re.compile(r"^grub\.pbkdf2\.sha512\.([1-9][0-9]*)\.((?:[0-9A-F]{2})+)\.((?:[0-9A-F]{2})+)$")


def grub_pbkdf2(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """grub.pbkdf2.sha512.<iterations>.<SALT>.<HASH> for ``password`` (a new random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"grub.pbkdf2.sha512.{iterations}.{salt.hex().upper()}.{derived.hex().upper()}"


def verify(password: str, hashed: str) -> bool:
    """Does ``hashed`` (this format) belong to ``password``?"""
    match = FORMAT.match(hashed)
    if not match:
        return False
    iterations, salt = int(match.group(1)), bytes.fromhex(match.group(2))
    return secrets.compare_digest(grub_pbkdf2(password, salt, iterations), hashed)


def new_password(path: Path) -> str:
    """The password in ``path``; a new random one written there first (0600) when it is missing or empty."""
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    path.chmod(0o600)
    return path.read_text().splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--new-password", type=Path, metavar="FILE", help="keep (or make) the password in FILE"
    )
    args = parser.parse_args(argv)
    if args.new_password:
        password = new_password(args.new_password)
    else:
        lines = sys.stdin.read().splitlines()
        password = lines[0] if lines else ""
    if not password:
        print("grub-pbkdf2: empty password", file=sys.stderr)
        return 1
    print(grub_pbkdf2(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
