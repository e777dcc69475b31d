"""The HSM custodians' material on the controller, for the custody checks (E.11, E.22, E.23, F.54).

The checks run on the controller, where ``ckms_ca_custodians`` names each custodian's directory
(lab: ``$CKMS_TOOL_CACHE/ansible/<stack>/custodians/<name>/`` with ``<name>.share`` and ``passphrase``).
Secrets go to the CA host only as 0600 files copied by Ansible from controller files (never on a command
line) into a private directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckms_checks import CA_HOME, CA_USER, policy

from ckms_app.hsm import custody


def custodians(host) -> list[dict[str, Any]]:
    return list(policy(host, "ckms_ca_custodians") or [])


def share_path(c: dict[str, Any]) -> Path:
    return Path(c["dest"]) / f"{c['name']}.share"


def passphrase_path(c: dict[str, Any]) -> Path:
    return Path(c["dest"]) / "passphrase"


def available(host) -> list[dict[str, Any]]:
    """Custodians whose share and passphrase are on this controller."""
    return [c for c in custodians(host) if share_path(c).is_file() and passphrase_path(c).is_file()]


def record(host) -> custody.CustodyRecord:
    return custody.CustodyRecord.from_json(host.file(f"{CA_HOME}/hsm/custody.json").content_string)


def credentials(chosen: list[dict[str, Any]]) -> list[custody.Credential]:
    return [
        custody.Credential(custody.read_share_file(share_path(c)), passphrase_path(c).read_text().strip())
        for c in chosen
    ]


def rebuild_so_pin(host, chosen: list[dict[str, Any]]) -> str:
    """The SO PIN, rebuilt in this process from two custodians (as ``ckms hsm`` does on the CA host)."""
    secret, _ = custody.reconstruct(record(host), credentials(chosen))
    return secret.so_pin


def copy_to_host(host, src: Path, dest: str, owner: str = CA_USER) -> None:
    host.ansible("copy", f"src={src} dest={dest} owner={owner} group={owner} mode=0600", check=False)


@contextlib.contextmanager
def staged(host, chosen: list[dict[str, Any]]) -> Iterator[list[str]]:
    """The chosen custodians' shares and passphrases in a private directory on the CA host (0700, CA user);
    yields the ``--share-file``/``--passphrase-file`` arguments. The directory is removed afterwards."""
    d = host.run("mktemp -d /var/tmp/ckms-custody-XXXXXX").stdout.strip()
    assert d.startswith("/var/tmp/ckms-custody-"), "cannot make a private directory on the CA host"
    try:
        host.run(f"chown {CA_USER}: {d} && chmod 700 {d}")
        shares, passes = [], []
        for c in chosen:
            copy_to_host(host, share_path(c), f"{d}/{c['name']}.share")
            copy_to_host(host, passphrase_path(c), f"{d}/{c['name']}.passphrase")
            shares += ["--share-file", f"{d}/{c['name']}.share"]
            passes += ["--passphrase-file", f"{d}/{c['name']}.passphrase"]
        yield shares + passes
    finally:
        host.run(f"rm -rf {shlex.quote(d)}")


@contextlib.contextmanager
def secret_on_host(host, text: str) -> Iterator[str]:
    """``text`` in a 0600 root file under /dev/shm on the CA host (memory only, and /dev is outside any
    search), to be fed to ``grep -f /dev/stdin``; removed afterwards, as is the controller's copy."""
    local_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None
    fd, local = tempfile.mkstemp(dir=local_dir, prefix="ckms-check-")
    remote = f"/dev/shm/ckms-check-{secrets.token_hex(8)}"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        copy_to_host(host, Path(local), remote, owner="root")
        yield remote
    finally:
        os.unlink(local)
        host.run(f"rm -f {remote}")


# the SO PIN is searched for in every file except these pseudo file systems (and /run/user); process
# environments (/proc/*/environ) are searched separately
SEARCH_EXCLUDED = ("proc", "sys", "dev", "run")


def search_files(pattern: str) -> str:
    """Shell: every file under / except /proc, /sys, /dev, /run/user that contains the line in ``pattern``
    (grep reads it on stdin, so the secret is on no command line)."""
    top = "|".join(SEARCH_EXCLUDED)
    grep = f"sh -c 'grep -rlsF --devices=skip -f /dev/stdin -- \"$@\" < {pattern}' grep"
    return (
        f"{{ ls -A / | grep -vxE '{top}' | sed 's#^#/#'; ls -A /run | grep -vx user | sed 's#^#/run/#'; }} "
        f"| tr '\\n' '\\0' | xargs -0 -r {grep}; true"
    )


def occurrences(haystacks: dict[str, str], needle: str) -> list[str]:
    """Names of the texts that contain ``needle`` (a pure helper, unit-tested)."""
    return sorted(name for name, text in haystacks.items() if needle and needle in text)
