"""CRLs and revocation at factory scale (issue 14 part 6; A.41, A.42): ``python -m ckms_lab.crl_bench``.

On a throwaway CA home (SoftHSM token, SQLite with synchronous=FULL, the real linter):

1. against a real daemon, one operator client over mutual TLS: CSR → certificate end to end (EST
   simpleenroll, guidance 5 s) and revocation latency (JSON API, guidance 50 ms), p50/p99;
2. in-process, the real :class:`~ckms_app.authority.crl_publisher.CrlPublisher` and signer: a full (and
   delta) CRL with 1,000 / 10,000 / 100,000 revoked entries, published: the time to publish, the time the
   signer takes for the full CRL (throwaway sign, lint, HSM sign of the linted bytes), the linter alone,
   and the CRL's size. "cold" is a publisher's first publication (every entry built), "warm" a later one
   after one more revocation (entries reused), which is what a running daemon does.

The target of issue 14: a 100,000-entry full CRL signed in under 2 s on the bench machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_lab.bench import _free_port, _percentile

_CLI = [sys.executable, "-m", "ckms_app.cli.main"]
SIZES = (1_000, 10_000, 100_000)
TARGET_SECONDS = 2.0


def make_home(workdir: Path) -> Path:
    home = workdir / "home"
    subprocess.run(
        [
            *_CLI,
            "ca",
            "init",
            "--home",
            str(home),
            "--demo",
            "--clock-source",
            "none",
            "--est-port",
            str(_free_port()),
            "--crl-port",
            str(_free_port()),
            "--json",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def daemon_latencies(home: Path, count: int) -> dict[str, Any]:
    """Sequential EST enrolments, then the revocation of each certificate, by one operator client."""
    from ckms_app.cli.client import CkmsClient, Credentials
    from ckms_app.config import load_config

    config = load_config(home)
    log = open(home / "daemon.log", "a")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*_CLI, "ca", "serve", "--home", str(home)], stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the daemon exited: see {home / 'daemon.log'}")
            if '"ready"' in line:
                break
        enrol: list[float] = []
        revoke: list[float] = []
        serials = []
        with CkmsClient(config, Credentials.for_role(config, "operator")) as client:
            for i in range(count):
                key = ec.generate_private_key(ec.SECP256R1())
                csr = (
                    x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")]))
                    .sign(key, hashes.SHA256())
                    .public_bytes(serialization.Encoding.DER)
                )
                t0 = time.perf_counter()
                cert = client.enroll(csr)
                enrol.append(time.perf_counter() - t0)
                serials.append(format(cert.serial_number, "x"))
            for serial in serials:
                t0 = time.perf_counter()
                client.revoke(serial, "keyCompromise")
                revoke.append(time.perf_counter() - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    return {
        "requests": count,
        "csr_to_certificate_p50_ms": _ms(_percentile(enrol, 0.5)),
        "csr_to_certificate_p99_ms": _ms(_percentile(enrol, 0.99)),
        "revocation_p50_ms": _ms(_percentile(revoke, 0.5)),
        "revocation_p99_ms": _ms(_percentile(revoke, 0.99)),
    }


def _fill_revocations(home: Path, entries: int) -> None:
    """Replace the revocations with ``entries`` synthetic ones (no certificate rows: a bench only)."""
    _append_revocations(home, entries, replace=True)


def _append_revocations(home: Path, entries: int, *, replace: bool = False) -> None:
    from sqlalchemy import delete, insert

    from ckms_app.config import load_config
    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import revocations, utcnow

    config = load_config(home)
    engine = open_engine(config.database_url, writer=True)
    now = utcnow()
    reasons = ("keyCompromise", "unspecified", "cessationOfOperation", "superseded")
    rows = [
        {
            "serial": format(secrets.randbits(127) | (1 << 126), "x"),
            "reason": reasons[i % len(reasons)],
            "revoked_at": now - dt.timedelta(seconds=i),
            "revoked_by": "bench",
        }
        for i in range(entries)
    ]
    try:
        with engine.begin() as conn:
            if replace:
                conn.execute(delete(revocations))  # CRL numbers keep growing across the rounds
            for start in range(0, len(rows), 10_000):
                conn.execute(insert(revocations), rows[start : start + 10_000])
    finally:
        engine.dispose()


class _TimedSigner:
    """The real signer, with the time of each CRL signature (guard, throwaway sign, lint, HSM sign)."""

    def __init__(self, signer: Any) -> None:
        self._signer = signer
        self.guard = signer.guard
        self.crl_seconds: list[float] = []

    async def crl(self, *args: Any) -> bytes:
        t0 = time.perf_counter()
        der: bytes = await self._signer.crl(*args)
        self.crl_seconds.append(time.perf_counter() - t0)
        return der


async def _crl_round(home: Path, entries: int) -> dict[str, Any]:
    from ckms_app.authority.crl_publisher import CrlPublisher
    from ckms_app.authority.linter import AsyncLinter, find_linter_binary
    from ckms_app.authority.signer import open_signer
    from ckms_app.config import load_config
    from ckms_app.hsm.token import Token
    from ckms_app.store.engine import open_engine
    from ckms_app.store.writer import GroupCommitWriter

    _fill_revocations(home, entries)
    config = load_config(home)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    reader = open_engine(config.database_url)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        with Token(config.token) as token:
            key = token.load_ec_key(config.ca_key_label)
            async with open_signer(config, key, writer) as real:
                signer = _TimedSigner(real)
                publisher = CrlPublisher(config, signer, ca_cert, writer, reader)  # type: ignore[arg-type]
                t0 = time.perf_counter()
                await publisher.publish()
                cold = time.perf_counter() - t0
                cold_full_sign = signer.crl_seconds[0]
                _append_revocations(home, 1)  # one more revocation since: what a running daemon sees
                t0 = time.perf_counter()
                await publisher.publish()
                warm = time.perf_counter() - t0
                warm_full_sign = signer.crl_seconds[2]
            der = (config.crl.directory / "full.crl").read_bytes()
            linter = await AsyncLinter.start(find_linter_binary(config.lint_binary))
            try:
                t0 = time.perf_counter()
                report = await linter.lint_crl(der)
                lint = time.perf_counter() - t0
            finally:
                await linter.close()
    finally:
        writer.close()
        reader.dispose()
    crl = x509.load_der_x509_crl(der)
    return {
        "entries": len(crl),
        "crl_bytes": len(der),
        "publish_cold_s": round(cold, 3),
        "publish_warm_s": round(warm, 3),
        "full_crl_sign_cold_s": round(cold_full_sign, 3),
        "full_crl_sign_warm_s": round(warm_full_sign, 3),
        "lint_s": round(lint, 3),
        "lint_ok": report.ok,
    }


def crl_rounds(home: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    return [asyncio.run(_crl_round(home, n)) for n in sizes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckms_lab.crl_bench", description=__doc__)
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="CRL entry counts, comma-separated"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="enrolments and revocations timed (0: skip)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    with tempfile.TemporaryDirectory(prefix="ckms-crl-bench-") as tmp:
        home = make_home(Path(tmp))
        result: dict[str, Any] = {"cpus": os.cpu_count()}
        if args.requests:
            result["latency"] = daemon_latencies(home, args.requests)
        result["crl"] = crl_rounds(home, sizes)
    print_result(result, as_json=args.json)
    largest = max(result["crl"], key=lambda r: r["entries"], default=None)
    return 0 if largest is None or largest["full_crl_sign_warm_s"] < TARGET_SECONDS else 1


def print_result(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    lat = result.get("latency")
    if lat:
        print(
            f"CSR → certificate (EST, one client, {lat['requests']} requests): p50 {lat['csr_to_certificate_p50_ms']} ms, "
            f"p99 {lat['csr_to_certificate_p99_ms']} ms (guidance: 5 s)"
        )
        print(
            f"revocation latency (JSON API): p50 {lat['revocation_p50_ms']} ms, p99 {lat['revocation_p99_ms']} ms "
            "(guidance: 50 ms)"
        )
    print(
        "| entries | CRL size | full CRL signed (cold / warm) | publish full+delta (cold / warm) | lint alone |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in result["crl"]:
        print(
            f"| {r['entries']:,} | {r['crl_bytes'] / 1e6:.2f} MB | {r['full_crl_sign_cold_s']} / {r['full_crl_sign_warm_s']} s "
            f"| {r['publish_cold_s']} / {r['publish_warm_s']} s | {r['lint_s']} s |"
        )
    print(
        f"({result['cpus']} CPUs, shared with everything else on this machine; target: < {TARGET_SECONDS} s at 100,000)"
    )


if __name__ == "__main__":
    sys.exit(main())
