"""A second CA node on the same PostgreSQL database, with its own token holding the restored CA key.

Several CA nodes (A.41, A.42) share the database but never a token: the CA key reaches another
node's HSM only as a wrapped backup restored under 2-of-3 custody (E.08–E.11, E.22). These are the
steps an administrator takes, driven through the real ``ckms`` commands so the benchmark and the
two-node test exercise exactly what an operator runs:

1. on the first node, split the SO credential among three custodians (``ckms hsm custody split``)
   and take a wrapped backup with two of them (``ckms hsm backup``);
2. give the new node a home with the first node's configuration (its own ports), the CA and audit
   public material, the daemon's TLS identity, the client credentials and the public custody record,
   but no token, no PINs and no database file;
3. restore the backup into a fresh token in that home with two custodians (``ckms hsm restore``),
   which proves the restored key against the CA certificate;
4. record the new home's self-test manifest (its configuration differs: the ports).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CKMS = [sys.executable, "-m", "ckms_app.cli.main"]
CUSTODIANS = ("alice", "bob", "carol")
# Copied to a new node: everything public or shared that the daemon and its clients read.
_SHARED = ("ca", "tls", "credentials", "hsm/custody.json")


class NodeSetupError(RuntimeError):
    """A ckms command of the node set-up failed; the message carries its output."""


def run_ckms(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CKMS, *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise NodeSetupError(
            f"ckms {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass(frozen=True)
class Custody:
    """The three custodians' share and passphrase files (a lab stand-in for three people)."""

    files: dict[str, tuple[Path, Path]]

    def args(self, *names: str) -> list[str]:
        """``--share-file``/``--passphrase-file`` arguments for the named custodians."""
        out: list[str] = []
        for name in names:
            out += ["--share-file", str(self.files[name][0])]
        for name in names:
            out += ["--passphrase-file", str(self.files[name][1])]
        return out


def split_custody(home: Path, workdir: Path) -> Custody:
    """Split the token's SO credential 2-of-3 among three lab custodians (passphrases in 0600 files)."""
    passphrases = workdir / "passphrases"
    passphrases.mkdir(mode=0o700, parents=True, exist_ok=True)
    args: list[str] = []
    for name in CUSTODIANS:
        pp = passphrases / name
        pp.write_text(f"lab passphrase of custodian {name}\n")
        pp.chmod(0o600)
        args += ["--custodian", name, "--passphrase-file", str(pp)]
    shares = workdir / "shares"
    run_ckms("hsm", "custody", "split", "--home", str(home), "--out-dir", str(shares), "--json", *args)
    return Custody({n: (shares / f"{n}.share", passphrases / n) for n in CUSTODIANS})


def backup_ca_key(
    home: Path, custody: Custody, out: Path, custodians: tuple[str, str] = ("alice", "bob")
) -> dict[str, Any]:
    """``ckms hsm backup``: the CA key (and the audit key) wrapped under the custody set's KWK."""
    proc = run_ckms(
        "hsm", "backup", "--home", str(home), "--out", str(out), "--json", *custody.args(*custodians)
    )
    return dict(json.loads(proc.stdout))


def add_node(
    first: Path,
    new: Path,
    *,
    backup: Path,
    custody: Custody,
    est_port: int,
    crl_port: int,
    custodians: tuple[str, str] = ("bob", "carol"),
    same_host_sqlite: bool = False,
) -> dict[str, Any]:
    """Create the home of another node of ``first``'s CA and restore the CA key into its own token.

    The nodes share ``first``'s PostgreSQL database. ``same_host_sqlite`` (for ``make bench`` only)
    lets a second daemon on the same host share ``first``'s SQLite file instead: SQLite's locks work
    between processes of one host, never between hosts, so this is no deployment.
    Returns ``ckms hsm restore``'s summary (restored labels, token directory, pairwise test).
    """
    if new.exists():
        raise NodeSetupError(f"{new} exists; a new node gets a new home")
    config = (first / "ckms.toml").read_text()
    if "postgresql" not in config:
        if not same_host_sqlite:
            raise NodeSetupError(
                "another node needs a shared database: init the first node with --database-url"
            )
        config = _set_line(config, "url", f'"sqlite:///{(first / "db" / "ckms.sqlite3").resolve()}"')
    new.mkdir(mode=0o700, parents=True)
    config = _set_line(config, "est_port", str(est_port))
    config = _set_line(config, "crl_port", str(crl_port))
    (new / "ckms.toml").write_text(config)
    for rel in _SHARED:
        src, dst = first / rel, new / rel
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=False)
        elif src.exists():
            shutil.copy2(src, dst)
    (new / "secrets").mkdir(mode=0o700, exist_ok=True)  # restore writes a fresh user PIN here
    token_dir = new / "hsm" / "tokens"
    proc = run_ckms(
        "hsm",
        "restore",
        "--home",
        str(new),
        "--in",
        str(backup),
        "--token-dir",
        str(token_dir),
        "--json",
        *custody.args(*custodians),
    )
    restored = dict(json.loads(proc.stdout))
    run_ckms("selftest", "--record", "--home", str(new))
    os.chmod(new, 0o700)
    return restored


def _set_line(config: str, key: str, value: str) -> str:
    updated, count = re.subn(rf"(?m)^{key} = .*$", lambda _: f"{key} = {value}", config)
    if count != 1:
        raise NodeSetupError(f"ckms.toml has {count} '{key}' lines; expected one")
    return updated
