"""``make bench``: issuance throughput and latency against a real daemon (A.41, A.42).

Sets up a throwaway CA home (SoftHSM, SQLite with synchronous=FULL), starts ``ckms ca serve``,
and drives EST simpleenroll over keep-alive mutual-TLS connections from separate client
processes, each request with a fresh, pre-generated CSR:
1. closed loop with N concurrent clients: certificates/s and latency percentiles;
2. open loop at a fixed rate (default 200/s): latency percentiles under a steady load;
3. the in-process ceiling: CSR checks + build + lint + HSM sign without HTTP or storage.

4. (``--crl``, on with ``--matrix``) :mod:`ckms_lab.crl_bench`: revocation latency and CSR → certificate
   end to end (p50/p99), and full CRLs of 1,000 / 10,000 / 100,000 entries: size and signing time.

``--db postgresql`` runs the same phases on a throwaway PostgreSQL server (fsync on), and
``--nodes 2`` starts a second daemon on the same database with its own token holding the CA key
restored from a wrapped backup (``ckms_lab.multinode``); the client processes are split between
the two daemons. ``--matrix`` (``make bench``) runs SQLite and PostgreSQL with 1 and 2
nodes. All daemons, their workers, the linters, the database and the load generator share this
machine's CPUs, so a second node adds no CPU here: it shows that nodes scale out correctly and
what their coordination costs, not what a second machine would add. Two nodes on SQLite share one
file on one host, which only a benchmark does (SQLite cannot be shared between hosts).
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.cpu_stages import ENV as STAGE_ENV
from ckms_lab.bench_stages import StageProbe, format_stages, per_certificate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_csrs(args: tuple[str, int, int]) -> list[bytes]:
    prefix, start, count = args
    out = []
    for i in range(start, start + count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix}-{i}")]))
            .sign(key, hashes.SHA256())
        )
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
        length = next(
            int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length"
        )
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
    return (
        f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _client_process(
    home: str,
    csrs: list[bytes],
    threads: int,
    duration: float,
    rate: float | None,
    start_at: float,
    queue: mp.Queue,
) -> None:  # type: ignore[type-arg]
    """One load process: ``threads`` keep-alive clients; closed loop, or open loop at ``rate``/s."""
    import threading
    import urllib.parse

    from ckms_app.cli.client import Credentials, client_ssl_context
    from ckms_app.config import load_config

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
    usage = os.times()
    queue.put((latencies, errors, usage.user + usage.system))


def drive(
    homes: Path | list[Path],
    csrs: list[bytes],
    *,
    processes: int,
    threads: int,
    duration: float,
    rate: float | None,
) -> dict[str, float]:
    """Load from ``processes`` client processes; with several homes (nodes) process i uses node i mod n."""
    nodes = [homes] if isinstance(homes, Path) else homes
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 2.0
    share = len(csrs) // processes
    per_process_rate = rate / processes if rate else None
    procs = [
        ctx.Process(
            target=_client_process,
            args=(
                str(nodes[i % len(nodes)]),
                csrs[i * share : (i + 1) * share],
                threads,
                duration,
                per_process_rate,
                start_at,
                queue,
            ),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors: list[str] = []
    client_cpu = 0.0
    for _ in procs:
        lat, err, cpu = queue.get()
        latencies += lat
        errors += err
        client_cpu += cpu
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
        # the load generator's own CPU (it shares the machine): setup and CSR handling included
        "client_cpu_us_per_request": round(client_cpu * 1e6 / len(latencies), 1)
        if latencies
        else float("nan"),
    }


async def _ceiling(home: Path, csrs: list[bytes], duration: float) -> dict[str, float]:
    """The issuance path's own steps in-process, on one core: CSR checks, the TBS from the profile
    template's parts, the signer (guard, throwaway sign, lint, HSM sign of the linted TBS); no HTTP,
    no storage, no audit."""
    from ckms_app.authority.guard import make_guard
    from ckms_app.authority.linter import AsyncLinter, find_linter_binary
    from ckms_app.authority.signer import Signer
    from ckms_app.config import load_config
    from ckms_app.hsm.token import Token
    from ckms_app.store.schema import utcnow
    from ckms_app.x509.csr_policy import check_csr
    from ckms_app.x509.profiles import EndEntityTemplate, new_serial

    config = load_config(home)
    token = Token(config.token)
    key = token.load_ec_key(config.ca_key_label)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    linter = await AsyncLinter.start(find_linter_binary(config.lint_binary)) if config.lint_enabled else None
    profile = config.profile(None)
    template = EndEntityTemplate(
        profile=profile, issuer=ca_cert, crl_url="http://x/full.crl", delta_crl_url="http://x/delta.crl"
    )
    signer = Signer(key, linter, make_guard(config, None))
    latencies: list[float] = []
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end and i < len(csrs):
        t0 = time.monotonic()
        checked = check_csr(csrs[i], profile, config.csr.max_bytes)
        tbs = template.tbs(  # as issuance does: the TBS from the template's parts, then the signer
            subject=checked.subject,
            sans=checked.sans,
            public_key=checked.public_key,
            serial=new_serial(),
            now=utcnow(),
            signature_hash=signer.hash_algorithm,
            spki=checked.spki,
        )
        await signer.certificate_tbs(tbs)
        latencies.append(time.monotonic() - t0)
        i += 1
    if linter is not None:
        await linter.close()
    token.close()
    return {
        "certs_per_s": round(len(latencies) / sum(latencies), 1),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
    }


_CLI = [sys.executable, "-m", "ckms_app.cli.main"]


def _homes(workdir: Path, db: str, nodes: int, stack: ExitStack) -> list[Path]:
    """A throwaway CA (on SQLite in its home, or on a fresh PostgreSQL server) and its nodes."""
    first = workdir / "home"
    init = [
        *_CLI,
        "ca",
        "init",
        "--home",
        str(first),
        "--est-port",
        str(_free_port()),
        "--crl-port",
        str(_free_port()),
        "--demo",  # the benchmark enrols as demo-operator
    ]
    if db == "postgresql":
        from ckms_lab.throwaway_postgres import PostgresServer

        server = PostgresServer().start()
        stack.callback(server.stop)
        init += ["--database-url", server.create_database("ckms_bench")]
    subprocess.run(init, check=True, capture_output=True)
    homes = [first]
    if nodes > 1:
        from ckms_lab import multinode

        custody = multinode.split_custody(first, workdir / "custody")
        backup = workdir / "ca-key.backup"
        multinode.backup_ca_key(first, custody, backup)
        for n in range(2, nodes + 1):
            home = workdir / f"home{n}"
            multinode.add_node(
                first,
                home,
                backup=backup,
                custody=custody,
                est_port=_free_port(),
                crl_port=_free_port(),
                same_host_sqlite=db == "sqlite",
            )
            homes.append(home)
    return homes


def _start_daemons(homes: list[Path], stack: ExitStack) -> list[StageProbe]:
    """Start one daemon per home, each counting CPU per stage (ckms_app.cpu_stages)."""
    probes = []
    for home in homes:
        stage_dir = home.parent / f"stages-{home.name}"
        stage_dir.mkdir(exist_ok=True)
        daemon = subprocess.Popen(
            [*_CLI, "ca", "serve", "--home", str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, STAGE_ENV: str(stage_dir)},
        )
        probes.append(StageProbe(daemon.pid, stage_dir))

        def stop(d: subprocess.Popen[str] = daemon) -> None:
            d.send_signal(signal.SIGTERM)
            d.wait(30)

        stack.callback(stop)
        assert daemon.stdout is not None
        while '"ready"' not in daemon.stdout.readline():
            if daemon.poll() is not None:
                raise SystemExit(f"daemon in {home} failed to start")
    return probes


def _snapshots(probes: list[StageProbe]) -> dict[int, dict[str, Any]]:
    merged: dict[int, dict[str, Any]] = {}
    for probe in probes:
        merged |= probe.snapshot()
    return merged


def run_setup(
    workdir: Path, csrs: list[bytes], args: argparse.Namespace, *, db: str, nodes: int, ceiling: bool
) -> dict[str, Any]:
    """Closed and open loop against ``nodes`` daemons on ``db``; then (if asked) the in-process ceiling."""
    processes = max(args.processes, nodes)
    with ExitStack() as stack:
        homes = _homes(workdir, db, nodes, stack)
        with ExitStack() as daemons:
            probes = _start_daemons(homes, daemons)
            share = len(csrs) // (1 + len(args.rates))
            before = _snapshots(probes)
            throughput = drive(
                homes,
                csrs[:share],
                processes=processes,
                threads=args.clients // processes,
                duration=args.duration,
                rate=None,
            )
            stages = per_certificate(before, _snapshots(probes))
            steady = []
            for n, rate in enumerate(args.rates, start=1):
                steady.append(
                    {
                        "rate_per_s": rate,
                        **drive(
                            homes,
                            csrs[n * share : (n + 1) * share],
                            processes=processes,
                            # enough workers that a slow answer does not hold back the schedule
                            threads=max(8, args.clients // processes, int(rate * 0.05) // processes),
                            duration=args.duration,
                            rate=rate,
                        ),
                    }
                )
        result: dict[str, Any] = {
            "db": db,
            "nodes": nodes,
            "closed_loop": {"clients": args.clients, **throughput},
            "cpu_stages": stages,
            "open_loop": steady,
        }
        if ceiling:
            result["in_process_ceiling"] = asyncio.run(
                _ceiling(homes[0], csrs[:3000], min(args.duration, 5.0))
            )
    return result


def _generate_csrs(args: argparse.Namespace) -> list[bytes]:
    # every phase gets an equal share; the closed loop's must outlast the fastest daemon
    share = int(max(1500, 3000 * args.duration, max(args.rates) * args.duration * 1.2))
    needed = share * (1 + len(args.rates))
    with mp.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        chunks = pool.map(_make_csrs, [("bench", i * 1000, 1000) for i in range(needed // 1000 + 1)])
    return [c for chunk in chunks for c in chunk]


def _print_single(result: dict[str, Any], args: argparse.Namespace, headline: bool) -> None:
    throughput = result["closed_loop"]
    if not headline:
        print(f"{result['db']}, {result['nodes']} node{'s' if result['nodes'] > 1 else ''}:")
    print(
        f"end to end, {args.clients} keep-alive mTLS clients: {throughput['certs_per_s']} certs/s, "
        f"p50 {throughput['p50_ms']} ms, p99 {throughput['p99_ms']} ms, errors {throughput['errors']}"
    )
    print(
        f"  {format_stages(result['cpu_stages'])}; "
        f"load generator {throughput['client_cpu_us_per_request']:g} µs per request"
    )
    for steady in result["open_loop"]:
        print(
            f"end to end, open loop at {steady['rate_per_s']:.0f}/s: {steady['certs_per_s']} certs/s, "
            f"p50 {steady['p50_ms']} ms, p99 {steady['p99_ms']} ms, errors {steady['errors']}"
        )
    ceiling = result.get("in_process_ceiling")
    if ceiling is not None:
        print(
            f"in-process build+lint+HSM sign ceiling: {ceiling['certs_per_s']} certs/s, "
            f"p50 {ceiling['p50_ms']} ms, p99 {ceiling['p99_ms']} ms  ({os.cpu_count()} CPUs)"
        )


def _print_matrix(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    _print_single(results[0], args, headline=True)  # SQLite, one node: the headline figures
    print()
    open_heads = "".join(f"| open {rate:.0f}/s p50 ms | p99 ms " for rate in args.rates)
    print(
        f"| database | nodes | closed loop ({args.clients} clients) certs/s | p50 ms | p99 ms "
        f"| daemon CPU µs/cert {open_heads}| errors |"
    )
    print("| --- " * (7 + 2 * len(args.rates)) + "|")
    for r in results:
        c = r["closed_loop"]
        opened = "".join(f"| {o['p50_ms']} | {o['p99_ms']} " for o in r["open_loop"])
        errors = c["errors"] + sum(o["errors"] for o in r["open_loop"])
        print(
            f"| {r['db']} | {r['nodes']} | {c['certs_per_s']} | {c['p50_ms']} | {c['p99_ms']} "
            f"| {r['cpu_stages']['total_us']:g} {opened}| {errors} |"
        )
    print()
    for r in results:
        print(f"{r['db']}, {r['nodes']} node(s): {format_stages(r['cpu_stages'])}")
    print(f"({os.cpu_count()} CPUs: all daemons, their linters, the database and the clients share them)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ckms_lab.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the closed loop")
    parser.add_argument("--processes", type=int, default=2, help="client processes (at least one per node)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[200.0, 1000.0],
        help="open-loop requests/s of the latency phases, comma-separated (default 200,1000)",
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the database of the CA (postgresql: a throwaway local server)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        choices=(1, 2),
        default=1,
        help="daemons on the one database, each with its own token",
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="sqlite and postgresql, 1 and 2 nodes (ignores --db and --nodes)",
    )
    parser.add_argument(
        "--crl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also CRLs at 1k/10k/100k entries, revocation and CSR→certificate latency "
        "(ckms_lab.crl_bench; default: with --matrix)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    csrs = _generate_csrs(args)
    setups = (
        [(db, n) for db in ("sqlite", "postgresql") for n in (1, 2)]
        if args.matrix
        else [(args.db, args.nodes)]
    )
    results = []
    for index, (db, nodes) in enumerate(setups):
        with tempfile.TemporaryDirectory(prefix="ckms-bench-") as tmp:
            # Each setup has its own database, so the same CSRs serve every setup.
            results.append(run_setup(Path(tmp), csrs, args, db=db, nodes=nodes, ceiling=index == 0))
    cpus = os.cpu_count()
    if args.json:
        if args.matrix:
            print(json.dumps({"matrix": results, "cpus": cpus}, indent=2))
        else:
            single = results[0]
            print(
                json.dumps(
                    {k: v for k, v in single.items() if k not in ("db", "nodes")}
                    | {"cpus": cpus, "db": single["db"], "nodes": single["nodes"]},
                    indent=2,
                )
            )
    elif args.matrix:
        _print_matrix(results, args)
    else:
        _print_single(results[0], args, headline=(args.db, args.nodes) == ("sqlite", 1))
    if args.crl if args.crl is not None else args.matrix:
        from ckms_lab import crl_bench  # issue 14 part 6: CRLs at factory scale, revocation latency

        print()
        return crl_bench.main(["--json"] if args.json else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
