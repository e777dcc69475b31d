"""A private, throwaway PostgreSQL server for the tests and ``make bench`` (real server, unix socket only).

It lives in the package rather than under ``tests/`` so the benchmark can start one without
importing the test suite.

PostgreSQL refuses to run as root, so when the suite runs as root the cluster belongs to the
``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found; run scripts/bootstrap-host.sh")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ckms-pg-"))
        self.data = self.dir / "data"
        self.port = 5432 + (os.getpid() % 1000) + 1
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o755)

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as_user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        bindir = _bindir()
        self._run(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "ckms", "--no-sync")
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.dir / "log"),
            "-o",
            f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=on -c max_connections=200",
            "start",
        )
        return self

    def create_database(self, name: str) -> str:
        self._run(str(_bindir() / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", "ckms", name)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://ckms@/{name}?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        subprocess.run(
            [*self._as_user, str(_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)
