"""``make bench``: issuance throughput and latency against a real daemon (A.41, A.42).

Sets up a throwaway CA home (SoftHSM, SQLite with synchronous=FULL), starts ``ckms ca serve``,
and drives EST simpleenroll over keep-alive mutual-TLS connections from separate client
processes, each request with a fresh, pre-generated CSR:
1. closed loop with N concurrent clients: certificates/s and latency percentiles;
2. open loop at a fixed rate (default 200/s): latency percentiles under a steady load;
3. the in-process ceiling: CSR checks + build + lint + HSM sign without HTTP or storage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_csrs(args: tuple[str, int, int]) -> list[bytes]:
    prefix, start, count = args
    out = []
    for i in range(start, start + count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}-{i}")])).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.DER))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _EstConnection:
    """A lean keep-alive EST client for load generation: raw TLS socket, pre-built requests.

    The load generator shares the machine with the daemon, so it must cost as little CPU as
    possible; http.client would take a third of the machine. Every response is still checked
    (status 200, PKCS#7 content type, full body read), and the first one is fully parsed.
    """

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self._sock = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
        self._buf = b""
        self.checked = False

    def enroll(self, request: bytes) -> bytes:
        self._sock.sendall(request)
        while b"\r\n\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length")
        while len(rest) < length:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            rest += chunk
        body, self._buf = rest[:length], rest[length:]
        if status != 200 or b"pkcs7-mime" not in head:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        if not self.checked:  # prove the answer is a real certificate once per connection
            from cryptography.hazmat.primitives.serialization import pkcs7

            pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
            self.checked = True
        return body

    def close(self) -> None:
        self._sock.close()


def _request_bytes(host: str, csr_der: bytes) -> bytes:
    body = base64.encodebytes(csr_der)
    return (f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _client_process(home: str, csrs: list[bytes], threads: int, duration: float, rate: float | None,
                    start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """One load process: ``threads`` keep-alive clients; closed loop, or open loop at ``rate``/s."""
    import threading
    import urllib.parse

    from .client import Credentials, client_ssl_context
    from .config import load_config

    config = load_config(Path(home))
    ctx = client_ssl_context(config, Credentials.for_role(config, "operator"))
    url = urllib.parse.urlsplit(config.server.est_url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    requests = [_request_bytes(host, c) for c in csrs]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = [0]

    def take() -> int | None:
        with lock:
            i = next_index[0]
            if i >= len(requests):
                return None
            next_index[0] += 1
            return i

    def worker() -> None:
        conn = _EstConnection(host, port, ctx)
        try:
            while True:
                i = take()
                now = time.monotonic()
                if i is None or now > start_at + duration:
                    return
                due = start_at + i / rate if rate else now  # open loop: a fixed schedule
                if due > now:
                    time.sleep(due - now)
                try:
                    conn.enroll(requests[i])
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = _EstConnection(host, port, ctx)
                    continue
                with lock:
                    latencies.append(time.monotonic() - due)
        finally:
            conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    while time.monotonic() < start_at - 0.5:
        time.sleep(0.05)
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put((latencies, errors))


def drive(home: Path, csrs: list[bytes], *, processes: int, threads: int, duration: float,
          rate: float | None) -> dict[str, float]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 2.0
    share = len(csrs) // processes
    per_process_rate = rate / processes if rate else None
    procs = [ctx.Process(target=_client_process,
                         args=(str(home), csrs[i * share:(i + 1) * share], threads, duration, per_process_rate,
                               start_at, queue)) for i in range(processes)]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors: list[str] = []
    for _ in procs:
        lat, err = queue.get()
        latencies += lat
        errors += err
    for p in procs:
        p.join()
    elapsed = duration
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "certs_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


async def _ceiling(home: Path, csrs: list[bytes], duration: float) -> dict[str, float]:
    """In-process build + sign: CSR checks, TBS, throwaway sign, lint, HSM sign; no HTTP, no storage."""
    from .config import load_config
    from .csr_policy import check_csr
    from .hsm import Token
    from .linter import AsyncLinter, find_linter_binary
    from .profiles import end_entity_builder, new_serial
    from .storage import utcnow

    config = load_config(home)
    token = Token(config.token)
    key = token.load_ec_key(config.ca_key_label)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    linter = await AsyncLinter.start(find_linter_binary(config.lint_binary)) if config.lint_enabled else None
    profile = config.profile(None)
    throwaway = ec.generate_private_key(ec.SECP256R1())
    latencies: list[float] = []
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end and i < len(csrs):
        t0 = time.monotonic()
        checked = check_csr(csrs[i], profile, config.csr.max_bytes)
        builder = end_entity_builder(profile=profile, subject=checked.subject, sans=checked.sans,
                                     public_key=checked.csr.public_key(), issuer=ca_cert,  # type: ignore[arg-type]
                                     serial=new_serial(), now=utcnow(), crl_url="http://x/full.crl",
                                     delta_crl_url="http://x/delta.crl")
        pre = builder.sign(throwaway, hashes.SHA256())
        if linter is not None:
            await linter.lint_certificate(pre.public_bytes(serialization.Encoding.DER))
        builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        latencies.append(time.monotonic() - t0)
        i += 1
    if linter is not None:
        await linter.close()
    token.close()
    return {"certs_per_s": round(len(latencies) / sum(latencies), 1),
            "p50_ms": round(_percentile(latencies, 0.5) * 1000, 3),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckms_app.bench", description=__doc__)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the closed loop")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s for the latency phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ckms-bench-") as tmp:
        home = Path(tmp) / "home"
        cli = [sys.executable, "-m", "ckms_app.cli"]
        subprocess.run([*cli, "ca", "init", "--home", str(home), "--est-port", str(_free_port()),
                        "--crl-port", str(_free_port())], check=True, capture_output=True)
        needed = int(max(1500, 1200 * args.duration) + args.rate * args.duration * 1.2)
        with mp.get_context("fork").Pool(os.cpu_count() or 2) as pool:
            chunks = pool.map(_make_csrs, [("bench", i * 1000, 1000) for i in range(needed // 1000 + 1)])
        csrs = [c for chunk in chunks for c in chunk]
        daemon = subprocess.Popen([*cli, "ca", "serve", "--home", str(home)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            assert daemon.stdout is not None
            while '"ready"' not in daemon.stdout.readline():
                if daemon.poll() is not None:
                    raise SystemExit("daemon failed to start")
            half = len(csrs) // 2
            throughput = drive(home, csrs[:half], processes=args.processes, threads=args.clients // args.processes,
                               duration=args.duration, rate=None)
            steady = drive(home, csrs[half:], processes=args.processes, threads=max(8, args.clients // args.processes),
                           duration=args.duration, rate=args.rate)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        ceiling = asyncio.run(_ceiling(home, csrs[:3000], min(args.duration, 5.0)))

    result = {"closed_loop": {"clients": args.clients, **throughput},
              "open_loop": {"rate_per_s": args.rate, **steady},
              "in_process_ceiling": ceiling, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"end to end, {args.clients} keep-alive mTLS clients: {throughput['certs_per_s']} certs/s, "
              f"p50 {throughput['p50_ms']} ms, p99 {throughput['p99_ms']} ms, errors {throughput['errors']}")
        print(f"end to end, open loop at {args.rate:.0f}/s: {steady['certs_per_s']} certs/s, "
              f"p50 {steady['p50_ms']} ms, p99 {steady['p99_ms']} ms, errors {steady['errors']}")
        print(f"in-process build+lint+HSM sign ceiling: {ceiling['certs_per_s']} certs/s, "
              f"p50 {ceiling['p50_ms']} ms, p99 {ceiling['p99_ms']} ms  ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
