"""Linter micro-benchmark: ``python -m ckms_lab.lint_bench [--bench N] [--window W]``.

Lints one typical device leaf N times through one ``ckms-lint`` helper with :class:`AsyncLinter`, the
CA's only linter client: once with W requests in flight on the pipe (how the daemon uses it) and once
one request at a time (a quarter of N), and prints the two rates in lints per second.
A dev tool: it lives in the lab package, not in the CA's ``ckms_app``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ckms_app.authority.linter import AsyncLinter


def sample_certificate() -> bytes:
    """A typical device leaf (EC P-256, SKI/AKI, critical basicConstraints and keyUsage)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-0001")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms bench CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


async def pipelined_rate(linter: AsyncLinter, der: bytes, n: int, window: int) -> float:
    """Lints per second with up to ``window`` requests in flight."""
    sem = asyncio.Semaphore(window)

    async def one() -> None:
        async with sem:
            report = await linter.lint_certificate(der)
            if not report.ok:
                raise RuntimeError(f"the bench certificate is blocked: {report.blocking}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def bench(n: int, window: int) -> tuple[float, float]:
    """(pipelined rate, one-at-a-time rate) in lints per second, on one helper."""
    der = sample_certificate()
    async with await AsyncLinter.start() as linter:
        pipelined = await pipelined_rate(linter, der, n, window)
        serial = await pipelined_rate(linter, der, max(1, n // 4), 1)
    return pipelined, serial


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ckms_lab.lint_bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--bench", type=int, metavar="N", default=2000, help="lints (default 2000)")
    parser.add_argument("--window", type=int, default=64, help="requests in flight (default 64)")
    args = parser.parse_args(argv)
    if args.bench < 1 or args.window < 1:
        parser.error("--bench and --window must be at least 1")
    pipelined, serial = asyncio.run(bench(args.bench, args.window))
    print(
        f"ckms-lint over the pipe: window {args.window} {pipelined:,.0f} lints/s; "
        f"one at a time {serial:,.0f} lints/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
