"""Fixtures for the CA daemon's integration tests: real SoftHSM, real TLS, real processes.

A CA home is created with the real ``ckms ca init`` and served by the real ``ckms ca serve`` in a
subprocess on loopback ports chosen at random, so tests see exactly what an operator sees.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CKMS = [sys.executable, "-m", "ckms_app.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ckms(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CKMS, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ckms {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class CaHome:
    home: Path
    summary: dict

    @property
    def ca_cert(self) -> Path:
        return Path(self.summary["ca_cert"])

    def cred(self, role: str) -> tuple[Path, Path]:
        c = self.summary["credentials"][role]
        return Path(c["cert"]), Path(c["key"])

    @property
    def est_url(self) -> str:
        return self.summary["est_url"]

    @property
    def crl_url(self) -> str:
        return self.summary["crl_url"]

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "db" / "ckms.sqlite3")

    def certificate_count(self) -> int:
        with self.db() as conn:
            return conn.execute("SELECT count(*) FROM certificates WHERE kind='end-entity'").fetchone()[0]

    def audit(self, action: str) -> list[tuple]:
        with self.db() as conn:
            return conn.execute(
                "SELECT entity_id, role, action, target, outcome, detail FROM audit_events "
                "WHERE action=? ORDER BY seq",
                (action,),
            ).fetchall()


def init_home(path: Path, *extra: str, demo: bool = True) -> CaHome:
    """``ckms ca init``; with ``demo`` (the tests' default) the demo identity of each role
    (``demo-<role>``: key, certificate and password in the home) that most tests act as."""
    out = ckms(
        "ca",
        "init",
        "--home",
        str(path),
        "--json",
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
        *(["--demo"] if demo else []),
        *extra,
    )
    return CaHome(path, json.loads(out.stdout))


class Daemon:
    """A ``ckms ca serve`` subprocess; ``start`` waits for its ready line."""

    def __init__(self, home: CaHome) -> None:
        self.home = home
        self.proc: subprocess.Popen[str] | None = None
        self.log = home.home / "daemon.log"

    def start(self, timeout: float = 30) -> None:
        logf = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*CKMS, "ca", "serve", "--home", str(self.home.home)],
            stdout=subprocess.PIPE,
            stderr=logf,
            text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"daemon exited before ready:\n{self.log.read_text()}")
            if '"ready"' in line:
                return
        raise AssertionError("daemon not ready in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.rest = self.proc.stdout.read() if self.proc.stdout else ""
        self.proc = None
        return rc


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(tmp_path_factory.mktemp("ca") / "home")


@pytest.fixture(scope="session")
def daemon(ca: CaHome) -> Iterator[Daemon]:
    d = Daemon(ca)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


def make_csr(
    cn: str = "device-0001",
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    curve: ec.EllipticCurve | None = None,
    sans: list[x509.GeneralName] | None = None,
    extra_subject: list[x509.NameAttribute] | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(curve or ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *(extra_subject or [])])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER), key


def curl_enroll(
    ca: CaHome,
    csr_der: bytes,
    tmp: Path,
    *,
    role: str | None = "operator",
    cert_key: tuple[Path, Path] | None = None,
    op: str = "simpleenroll",
    body: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """POST a base64 DER CSR with curl, as an EST client would; returns curl's result."""
    req = tmp / f"req-{time.monotonic_ns()}.b64"
    req.write_bytes(body if body is not None else base64.encodebytes(csr_der))
    cmd = [
        "curl",
        "-sS",
        "--cacert",
        str(ca.ca_cert),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{req}",
        "-w",
        "\n%{http_code}",
        f"{ca.est_url}/{op}",
    ]
    creds = cert_key or (ca.cred(role) if role else None)
    if creds:
        cmd[2:2] = ["--cert", str(creds[0]), "--key", str(creds[1])]
    return subprocess.run(cmd, capture_output=True, timeout=60)


def split_status(out: bytes) -> tuple[bytes, int]:
    body, _, code = out.rpartition(b"\n")
    return body, int(code)
