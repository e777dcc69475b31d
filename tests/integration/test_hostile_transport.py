"""The daemon's transport under hostile clients (issue 11 items 1–3): the TLS algorithms a real client can
negotiate, slow-header/slow-body floods on both listeners while a terminal keeps enrolling, the
per-client connection cap, and refused requests that cannot grow the audit trail at will.

Real daemon (SoftHSM, two workers), real ``openssl s_client``, real sockets from several loopback
source addresses (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import multiprocessing
import os
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomli_w

from .conftest import CaHome, Daemon, ckms, init_home, make_csr

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
SLACK = 4.0  # a busy 2-core machine: the close may come this much after the deadline
SUMMARY_SECONDS = 1.0
PER_CLIENT = 120


def s_client(ca: CaHome, *args: str) -> subprocess.CompletedProcess[str]:
    u = urlsplit(ca.est_url)
    cert, key = ca.cred("operator")
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{u.hostname}:{u.port}", "-CAfile", str(ca.ca_cert),
         "-cert", str(cert), "-key", str(key), "-brief", *args],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_tls_offers_only_the_guidance_algorithms(ca: CaHome, daemon: Daemon) -> None:
    """A.62/A.64: X25519, X448 and ChaCha20 refused, TLS 1.2 refused; P-256/P-384 with AES-GCM accepted."""
    for refused in (
        ("-tls1_3", "-groups", "X25519"),
        ("-tls1_3", "-groups", "X448"),
        ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
        ("-tls1_2",),
    ):
        out = s_client(ca, *refused)
        assert out.returncode != 0, (refused, out.stdout, out.stderr)
        # asyncio closes on a failed handshake (the client may see the alert or just the close)
        assert "CONNECTION ESTABLISHED" not in out.stderr and "Ciphersuite" not in out.stderr, out.stderr
    for group, suite in (("P-256", "TLS_AES_128_GCM_SHA256"), ("P-384", "TLS_AES_256_GCM_SHA384")):
        out = s_client(ca, "-tls1_3", "-groups", group, "-ciphersuites", suite)
        assert out.returncode == 0, (group, out.stderr)
        assert "Protocol version: TLSv1.3" in out.stderr and f"Ciphersuite: {suite}" in out.stderr
        curve = {"P-256": "prime256v1", "P-384": "secp384r1"}[group]
        assert (
            f"Server Temp Key: ECDH, {curve}" in out.stderr or f"Peer Temp Key: ECDH, {curve}" in out.stderr
        )
    # offered everything, the server picks from its list only
    out = s_client(ca, "-tls1_3", "-groups", "X25519:P-256", "-ciphersuites",
                   "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")  # fmt: skip
    assert out.returncode == 0 and "Ciphersuite: TLS_AES_256_GCM_SHA384" in out.stderr, out.stderr
    assert "prime256v1" in out.stderr


# --- a CA with short timeouts, two workers and a fast refusal summary -------------------------------


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaHome, Daemon]]:
    home = init_home(tmp_path_factory.mktemp("hostile") / "home")
    path = home.home / "ckms.toml"
    raw = tomllib.loads(path.read_text())
    raw["server"].update(
        workers=2,
        header_timeout_seconds=HEADER_TIMEOUT,
        body_timeout_seconds=BODY_TIMEOUT,
        keepalive_timeout_seconds=5.0,
        max_connections_per_client=PER_CLIENT,
    )
    raw.setdefault("audit", {}).update(refusal_summary_seconds=SUMMARY_SECONDS)
    path.write_text(tomli_w.dumps(raw))
    # the start-up integrity self-test covers ckms.toml: record the changed file as the new baseline
    ckms("selftest", "--record", "--home", str(home.home))
    d = Daemon(home)
    d.start()
    yield home, d
    if d.proc is not None:
        d.stop()


def _workers(d: Daemon) -> list[int]:
    assert d.proc is not None
    return [int(p) for p in Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()]


def _fds(d: Daemon) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in _workers(d))


def _client_ctx(ca: CaHome, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    if cert:
        ctx.load_cert_chain(*ca.cred("operator"))
    return ctx


async def _slow(
    host: str, port: int, source: str, ctx: ssl.SSLContext | None, head: bytes, drip: bytes
) -> tuple[float, float]:
    """Open a connection, send ``head`` then one byte of ``drip`` every 0.25 s; the seconds until the
    server's close from before connecting (a lower bound of the server's span) and from the head sent
    (an upper bound: the server's deadline starts before that)."""
    start = head_done = time.monotonic()
    writer = None
    try:
        # Inside the try: on a loaded machine the server's handshake deadline (header_timeout) can end a
        # flood connection before its TLS handshake completes; that is the server closing it, timed too.
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, local_addr=(source, 0), server_hostname=host if ctx else None
        )
        writer.write(head)
        head_done = time.monotonic()

        async def drain_reads() -> None:
            while await reader.read(4096):
                pass

        reads = asyncio.create_task(drain_reads())
        for i in range(10_000):
            if reads.done():
                break
            writer.write(drip[i % len(drip) : i % len(drip) + 1])
            await asyncio.sleep(0.25)
        await reads
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    end = time.monotonic()
    if writer is not None:
        writer.transport.abort()
    return end - start, end - head_done


def _flood(ca: CaHome, out: Any, ready: Any) -> None:
    """The 400 slow clients, in a process of their own (so the enrolling client does not share a GIL
    with them); ``out`` receives {kind: [(lower, upper), ...]}."""
    results: dict[str, list[tuple[float, float]]] = {}
    est, crl = urlsplit(ca.est_url), urlsplit(ca.crl_url)
    tls = _client_ctx(ca, cert=True)
    body_head = (
        "POST {path} HTTP/1.1\r\nHost: ca\r\nContent-Type: application/pkcs10\r\nContent-Length: 3000\r\n\r\n"
    )

    async def main() -> None:
        jobs = []
        for i in range(400):
            source = f"127.0.0.{2 + i % 4}"
            slow_body = i % 2 == 1
            on_tls = (i // 2) % 2 == 0
            host, port = (est.hostname, est.port) if on_tls else (crl.hostname, crl.port)
            path = "/.well-known/est/simpleenroll" if on_tls else "/crl/full.crl"
            if slow_body:
                head = body_head.format(path=path).encode()
                drip = b"QUFB"
            else:
                head = f"GET {path} HTTP/1.1\r\n".encode()
                drip = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
            kind = ("body" if slow_body else "header") + ("-tls" if on_tls else "-plain")
            jobs.append((kind, _slow(str(host), int(port or 0), source, tls if on_tls else None, head, drip)))
        tasks = [(kind, asyncio.create_task(job)) for kind, job in jobs]
        await asyncio.sleep(0.5)
        ready.set()
        for kind, task in tasks:
            results.setdefault(kind, []).append(await task)

    asyncio.run(main())
    out.put(results)


def _enroll_loop(ca: CaHome, stop: threading.Event, latencies: list[float], errors: list[str]) -> None:
    u = urlsplit(ca.est_url)
    conn = http.client.HTTPSConnection(str(u.hostname), u.port, context=_client_ctx(ca, cert=True))
    i = 0
    while not stop.is_set():
        csr, _ = make_csr(f"flood-{os.getpid()}-{i}")
        i += 1
        t = time.perf_counter()
        conn.request(
            "POST", f"{u.path}/simpleenroll", base64.encodebytes(csr), {"Content-Type": "application/pkcs10"}
        )
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t)
        if resp.status != 200:
            errors.append(str(resp.status))
    conn.close()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def test_slow_flood_is_closed_in_time_and_does_not_delay_enrolment(hardened: tuple[CaHome, Daemon]) -> None:
    ca, d = hardened
    # warm up (TLS session, first issuance) before measuring
    warm: list[float] = []
    stop, errors = threading.Event(), []
    t = threading.Thread(target=_enroll_loop, args=(ca, stop, warm, errors))
    t.start()
    time.sleep(2.0)
    stop.set()
    t.join()
    baseline_fds = _fds(d)
    warm_p99 = _p99(warm)
    mpc = multiprocessing.get_context("fork")
    out, ready = mpc.Queue(), mpc.Event()
    flood = mpc.Process(target=_flood, args=(ca, out, ready))
    flood.start()
    assert ready.wait(30)
    latencies: list[float] = []
    stop = threading.Event()
    enrol = threading.Thread(target=_enroll_loop, args=(ca, stop, latencies, errors))
    enrol.start()
    time.sleep(1.0)
    held = _fds(d) - baseline_fds  # the flood is really holding connections while we enrol
    results: dict[str, list[tuple[float, float]]] = out.get(timeout=60)
    flood.join(30)
    stop.set()
    enrol.join(30)
    assert flood.exitcode == 0
    assert held >= 300, f"only {held} descriptors held by the flood"
    assert not errors, errors
    counts = {k: len(v) for k, v in results.items()}
    assert counts == {"header-tls": 100, "header-plain": 100, "body-tls": 100, "body-plain": 100}, counts
    for kind, spans in results.items():
        limit = HEADER_TIMEOUT if kind.startswith("header") else BODY_TIMEOUT
        # not before the deadline, and not long after it
        assert min(lower for lower, _ in spans) >= limit - 0.1, (kind, spans)
        assert max(upper for _, upper in spans) <= limit + SLACK, (kind, spans)
    assert len(latencies) >= 20
    p99 = _p99(latencies)
    spans = {k: (round(min(a for a, _ in v), 2), round(max(b for _, b in v), 2)) for k, v in results.items()}
    print(
        f"flood: held {held} fds; close (min, max) s {spans}; enrol p99 {p99 * 1000:.1f} ms, before {warm_p99 * 1000:.1f}"
    )
    # 100 ms; on a machine so loaded that enrolling alone is slower, no worse than twice that (+30 ms)
    bound = max(0.100, 2 * warm_p99 + 0.030)
    assert p99 < bound, f"enrolment p99 {p99 * 1000:.1f} ms under the flood, {warm_p99 * 1000:.1f} ms before"
    time.sleep(0.5)
    assert _fds(d) <= baseline_fds + 10, "descriptors were not given back"
    log = d.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


def test_per_client_connection_cap(hardened: tuple[CaHome, Daemon]) -> None:
    """More than the cap from one address: the excess is closed at once; another address is unaffected."""
    ca, d = hardened
    crl = urlsplit(ca.crl_url)
    socks, closed = [], 0
    for _ in range(PER_CLIENT + 30):
        s = socket.create_connection((crl.hostname, crl.port), source_address=("127.0.0.9", 0))
        socks.append(s)
    time.sleep(1.0)
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except ConnectionError:
            closed += 1
    others = socket.create_connection((crl.hostname, crl.port), source_address=("127.0.0.1", 0))
    others.sendall(b"GET /crl/ca.crt HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
    reply = others.recv(64)
    for s in [*socks, others]:
        s.close()
    # two workers may each admit one past the cap in a race; never more
    print(f"cap {PER_CLIENT}: {closed} of {PER_CLIENT + 30} closed at once")
    assert 30 - 2 <= closed <= 30, closed
    assert reply.startswith(b"HTTP/1.1 200"), reply


def _audit_rows(ca: CaHome) -> int:
    with ca.db() as conn:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def _summaries(ca: CaHome) -> list[dict]:
    return [json.loads(r[5]) for r in ca.audit("auth.deny.summary")]


def test_unauthenticated_requests_do_not_grow_the_trail(hardened: tuple[CaHome, Daemon]) -> None:
    """10,000 requests without a client certificate: a bounded number of records, all counted, chain intact."""
    ca, d = hardened
    u = urlsplit(ca.est_url)
    route = "/api/v1/certificates/{serial}"
    time.sleep(SUMMARY_SECONDS * 1.5)  # let earlier refusals (the flood's) be summarised first
    rows_before, summaries_before = _audit_rows(ca), len(_summaries(ca))
    individual_before = len(ca.audit("auth.deny"))
    n, concurrency = 10_000, 8
    statuses: dict[int, int] = {}

    def client(share: int) -> None:
        conn = http.client.HTTPSConnection(str(u.hostname), u.port, context=_client_ctx(ca, cert=False))
        for i in range(share):
            conn.request("GET", f"/api/v1/certificates/{i:x}{'a' * 200}")
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(n // concurrency,)) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    elapsed = time.monotonic() - start
    assert statuses == {401: n}, statuses
    # every refusal is on the trail: its own auth.deny record, or counted in one summary (allow a flush)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = _summaries(ca)[summaries_before:]
        counted = sum(e["count"] for s in new for e in s["entries"] if e["route"] == route)
        individual = sum(r[3] == route for r in ca.audit("auth.deny")[individual_before:])
        if counted + individual >= n:
            break
        time.sleep(0.5)
    assert counted + individual == n, (counted, individual)
    assert all(s["other"] == 0 for s in new)
    grown = _audit_rows(ca) - rows_before
    intervals = (time.monotonic() - start) / SUMMARY_SECONDS + 2
    bound = int(intervals * 2 * (20 + 1)) + 10  # two workers, 20 individual + 1 summary each, + seals
    print(f"{n} refusals in {elapsed:.1f} s: {grown} records ({individual} individual), bound {bound}")
    assert grown <= bound, f"{grown} records for {n} refusals in {elapsed:.1f} s (bound {bound})"
    assert grown < n / 10
    # no record carries what the client sent: the route's template, not the 200-character path
    assert all(len(json.dumps(s)) < 20_000 for s in new)
    with ca.db() as conn:
        targets = {r[0] for r in conn.execute("SELECT target FROM audit_events WHERE action='auth.deny'")}
    assert route in targets and not any("aaaa" in t for t in targets)
    assert individual <= bound
    # the chain still verifies
    d.stop()
    verify = ckms(
        "audit", "verify", "--home", str(ca.home), "--password-file",
        str(ca.home / "credentials" / "auditor.password"), "--cert", str(ca.cred("auditor")[0]),
        check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
