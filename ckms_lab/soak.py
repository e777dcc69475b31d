"""``make soak``: a steady mixed load against a real daemon for a long time (issue 11 item 11; A.41, A.42).

Sets up a throwaway CA home (SoftHSM, SQLite with synchronous=FULL, like ``make bench``), starts
``ckms ca serve`` and sends requests at a fixed rate (default 200/s for 10 minutes) from keep-alive
connections, the mix a factory sees plus some hostility:

* ``enrol``    EST simpleenroll of a fresh key (the terminal's operator credential),
* ``reenrol``  EST simplereenroll of a subject issued earlier, with a new key,
* ``revoke``   POST /api/v1/revocations of a certificate issued earlier (each one once),
* ``crl``      GET /crl/full.crl on the plain-HTTP listener,
* ``bad``      requests that must be refused: no client certificate (401), a body that is not base64
               (400), an unknown route (404).

It is an open loop: request *i* is due at ``start + i / rate`` whatever happened before, and its latency
is measured from when it was due (no coordinated omission). Good requests must all succeed; a bad
request must get its 4xx (a 5xx or a dropped connection is an error). The daemon's RSS and open
descriptors (supervisor and workers together) are sampled every ``--sample`` seconds; the report gives
them at start and end, so a leak shows as growth. The result is printed as JSON (``--json FILE`` too).
Exit status 1 if any request erred.

``python -m ckms_lab.soak --duration 60 --rate 200`` runs a minute; ``make soak`` runs the full
10 minutes (``SOAK_DURATION``/``SOAK_RATE`` override).
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import random
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from ckms_lab.bench import _CLI, _free_port, _percentile

MIX = (("enrol", 45), ("reenrol", 15), ("revoke", 10), ("crl", 20), ("bad", 10))
BAD = (
    ("no_client_certificate", 401),
    ("body_not_base64", 400),
    ("unknown_route", 404),
)


class _Conn:
    """A minimal keep-alive HTTP/1.1 client on a raw (TLS) socket: cheap enough to share the machine."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None) -> None:
        self.host, self.port, self.ctx = host, port, ctx
        self._sock: socket.socket | None = None
        self._buf = b""

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=30)
        self._buf = b""
        return self.ctx.wrap_socket(raw, server_hostname=self.host) if self.ctx else raw

    def _usable(self) -> socket.socket:
        """The connection, reopened if the server closed it while idle (its keep-alive timeout)."""
        if self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable and not self._buf:
                try:
                    self._sock.setblocking(False)
                    gone = self._sock.recv(1) == b""
                except (BlockingIOError, ssl.SSLWantReadError):
                    gone = False
                except OSError:
                    gone = True
                finally:
                    self._sock.setblocking(True)
                    self._sock.settimeout(30)
                if gone:
                    self._sock.close()
                    self._sock = None
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def request(self, method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, bytes]:
        sock = self._usable()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        raw_head, _, rest = self._buf.partition(b"\r\n\r\n")
        lines = raw_head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        length = int(fields.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            rest += chunk
        self._buf = rest[length:]
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, rest[:length]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""


def _csr(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))


def _serial_of(body: bytes) -> str:
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]
    return format(cert.serial_number, "x")


@dataclass
class _State:
    """What the load has issued so far (re-enrolment and revocation work on it), and the results."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current: dict[str, str] = field(default_factory=dict)  # CN -> serial of its current certificate
    subjects: list[str] = field(default_factory=list)  # CNs ever issued (some since revoked)
    superseded: list[str] = field(default_factory=list)  # serials replaced by a re-enrolment, not revoked
    busy: set[str] = field(default_factory=set)  # CNs with a re-enrolment or revocation in flight
    latencies: dict[str, list[float]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    seq: int = 0

    def next_cn(self) -> str:
        with self.lock:
            self.seq += 1
            return f"soak-{self.seq}"

    def take_subject(self) -> str | None:
        """A CN with a current certificate and nothing in flight, marked busy (the lock is held)."""
        for _ in range(20):
            if not self.subjects:
                return None
            cn = random.choice(self.subjects[-2000:])
            if cn in self.current and cn not in self.busy:
                self.busy.add(cn)
                return cn
        return None

    def error(self, op: str, what: str) -> None:
        with self.lock:
            self.errors[op] += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{op}: {what}")


class _Client:
    """One worker thread's connections and the operations of the mix."""

    def __init__(self, home: Path, summary: dict[str, Any], state: _State) -> None:
        est, crl = urlsplit(summary["est_url"]), urlsplit(summary["crl_url"])
        cafile = summary["ca_cert"]
        cred = summary["credentials"]["operator"]
        with_cert = ssl.create_default_context(cafile=cafile)
        with_cert.load_cert_chain(cred["cert"], cred["key"])
        without = ssl.create_default_context(cafile=cafile)
        self.est_path = est.path
        self.est = _Conn(str(est.hostname), int(est.port or 443), with_cert)
        self.anon = _Conn(str(est.hostname), int(est.port or 443), without)
        self.crl = _Conn(str(crl.hostname), int(crl.port or 80), None)
        self.state = state

    def run(self, op: str) -> None:
        st = self.state
        try:
            getattr(self, op)()
        except Exception as exc:  # noqa: BLE001 - every failure of a request is counted and sampled
            st.error(op, f"{type(exc).__name__}: {exc}"[:300])
            for conn in (self.est, self.anon, self.crl):
                conn.close()

    def _expect(self, op: str, status: int, body: bytes, want: int = 200) -> None:
        if status != want:
            raise RuntimeError(f"HTTP {status} (wanted {want}): {body[:160]!r}")

    def enrol(self) -> None:
        cn = self.state.next_cn()
        status, body = self.est.request(
            "POST", f"{self.est_path}/simpleenroll", _csr(cn), "application/pkcs10"
        )
        self._expect("enrol", status, body)
        serial = _serial_of(body)
        with self.state.lock:
            self.state.current[cn] = serial
            self.state.subjects.append(cn)

    def reenrol(self) -> None:
        st = self.state
        with st.lock:
            cn = st.take_subject()
        if cn is None:
            return self.enrol()
        try:
            status, body = self.est.request(
                "POST", f"{self.est_path}/simplereenroll", _csr(cn), "application/pkcs10"
            )
            self._expect("reenrol", status, body)
            serial = _serial_of(body)
            with st.lock:
                st.superseded.append(st.current[cn])
                st.current[cn] = serial
        finally:
            with st.lock:
                st.busy.discard(cn)

    def revoke(self) -> None:
        """Half the time a superseded certificate, else a device's current one (it leaves the pool)."""
        st = self.state
        cn: str | None = None
        serial: str | None
        with st.lock:
            if st.superseded and random.random() < 0.5:
                serial = st.superseded.pop(random.randrange(len(st.superseded)))
            else:
                cn = st.take_subject()
                serial = st.current.pop(cn) if cn is not None else None
        if serial is None:
            return self.crl_fetch()
        try:
            body = json.dumps({"serial": serial, "reason": "superseded"}).encode()
            status, answer = self.est.request("POST", "/api/v1/revocations", body, "application/json")
            self._expect("revoke", status, answer)
        finally:
            if cn is not None:
                with st.lock:
                    st.busy.discard(cn)

    def crl_fetch(self) -> None:
        status, body = self.crl.request("GET", "/crl/full.crl")
        self._expect("crl", status, body)
        x509.load_der_x509_crl(body)

    def bad(self) -> None:
        kind, want = random.choice(BAD)
        if kind == "no_client_certificate":
            status, body = self.anon.request(
                "POST", f"{self.est_path}/simpleenroll", _csr("outsider"), "application/pkcs10"
            )
        elif kind == "body_not_base64":
            status, body = self.est.request(
                "POST", f"{self.est_path}/simpleenroll", b"%%% not base64 %%%", "application/pkcs10"
            )
        else:
            status, body = self.est.request("GET", "/.well-known/est/no/such/route")
        self._expect("bad", status, body, want)


def _proc_tree(pid: int) -> list[int]:
    """The daemon and all its descendants (workers, their lint helpers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for c in children for p in _proc_tree(int(c)))]


def _resources(pid: int) -> dict[str, Any]:
    """RSS (KiB) and open descriptors of the daemon: the supervisor, workers and helpers together, and
    RSS per process kind (``ckms`` supervisor and workers, ``ckms-lint`` helpers), so growth is placed."""
    rss = fds = 0
    tree = _proc_tree(pid)
    by_kind: dict[str, int] = {}
    for p in tree:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
            kind = "supervisor" if p == pid else Path(f"/proc/{p}/comm").read_text().strip()
        except (OSError, StopIteration):
            continue
        rss += kib
        by_kind[kind] = by_kind.get(kind, 0) + kib
    return {"rss_kib": rss, "open_fds": fds, "processes": len(tree), "rss_kib_by_process": by_kind}


def soak(
    duration: float = 600.0,
    rate: float = 200.0,
    *,
    threads: int = 16,
    sample: float = 10.0,
    workdir: Path | None = None,
    mix: tuple[tuple[str, int], ...] = MIX,
) -> dict[str, Any]:
    """Set up a CA, serve it, run the mixed load; the report (see the module docstring)."""
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ckms-soak-")))
        home = workdir / "home"
        init = [*_CLI, "ca", "init", "--home", str(home), "--json", "--demo",
                "--est-port", str(_free_port()), "--crl-port", str(_free_port())]  # fmt: skip
        summary = json.loads(subprocess.run(init, check=True, capture_output=True, text=True).stdout)
        log = open(workdir / "daemon.log", "w")  # noqa: SIM115 - closed by the stack
        stack.callback(log.close)
        daemon = subprocess.Popen(
            [*_CLI, "ca", "serve", "--home", str(home)], stdout=subprocess.PIPE, stderr=log, text=True
        )

        def stop_daemon() -> None:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(60)

        stack.callback(stop_daemon)
        assert daemon.stdout is not None
        while '"ready"' not in daemon.stdout.readline():
            if daemon.poll() is not None:
                raise SystemExit(f"daemon failed to start; see {workdir / 'daemon.log'}")
        state = _State()
        result = _drive(home, summary, state, daemon.pid, duration, rate, threads, sample, mix)
        result["mix"] = dict(mix)
        stop_daemon()
        log.flush()
        tracebacks = (workdir / "daemon.log").read_text().count("Traceback")
        result["daemon_tracebacks"] = tracebacks
        result["daemon_exit"] = daemon.returncode
    return result


def _drive(
    home: Path,
    summary: dict[str, Any],
    state: _State,
    pid: int,
    duration: float,
    rate: float,
    threads: int,
    sample: float,
    mix: tuple[tuple[str, int], ...] = MIX,
) -> dict[str, Any]:
    jobs: queue.Queue[tuple[str, float] | None] = queue.Queue()
    names = [name for name, _ in mix]
    weights = [w for _, w in mix]

    def worker() -> None:
        client = _Client(home, summary, state)
        while (job := jobs.get()) is not None:
            op, due = job
            client.run("crl_fetch" if op == "crl" else op)
            done = time.perf_counter()
            with state.lock:
                state.counts[op] += 1
                state.latencies.setdefault(op, []).append(done - due)
        for conn in (client.est, client.anon, client.crl):
            conn.close()

    # warm-up: one of each, so the first TLS handshakes and the first issuance are not in the figures
    warm = _Client(home, summary, state)
    for op in ("enrol", "reenrol", "crl_fetch", "bad"):
        warm.run(op)
    if state.errors:
        raise SystemExit(f"warm-up failed: {state.error_samples}")
    state.latencies.clear()
    state.counts.clear()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    samples = [{"t": 0.0, **_resources(pid)}]
    rng = random.Random(7)
    start = time.perf_counter()
    next_sample = sample
    total = int(duration * rate)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((rng.choices(names, weights)[0], due))
        if due - start >= next_sample:
            samples.append({"t": round(due - start, 1), **_resources(pid)})
            next_sample += sample
    for _ in pool:
        jobs.put(None)
    for t in pool:
        t.join(120)
    elapsed = time.perf_counter() - start
    time.sleep(1.0)  # let the server close what the clients closed
    samples.append({"t": round(elapsed, 1), **_resources(pid)})
    every = [v for values in state.latencies.values() for v in values]
    good = {op: n for op, n in state.counts.items() if op != "bad"}
    return {
        "duration_s": round(elapsed, 1),
        "rate_per_s": rate,
        "requests": sum(state.counts.values()),
        "achieved_per_s": round(sum(state.counts.values()) / elapsed, 1),
        "by_operation": dict(state.counts),
        "errors_good_requests": sum(n for op, n in state.errors.items() if op != "bad"),
        "errors_bad_requests": state.errors.get("bad", 0),
        "error_samples": state.error_samples,
        "good_requests": sum(good.values()),
        "latency_ms": {
            "all": _latency(every),
            **{op: _latency(values) for op, values in sorted(state.latencies.items())},
        },
        "daemon_start": samples[0],
        "daemon_end": samples[-1],
        "daemon_samples": samples,
    }


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 0.50) * 1000, 1),
        "p99": round(_percentile(values, 0.99) * 1000, 1),
        "max": round(max(values, default=float("nan")) * 1000, 1),
    }


_DEFAULT_MIX = ",".join(f"{name}={weight}" for name, weight in MIX)


def _parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    known = {name for name, _ in MIX}
    mix: list[tuple[str, int]] = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in known or not weight.isdigit() or int(weight) <= 0:
            raise argparse.ArgumentTypeError(f"{part!r}: expected NAME=WEIGHT with NAME in {sorted(known)}")
        mix.append((name, int(weight)))
    return tuple(mix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckms_lab.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS/fd samples")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--mix",
        type=_parse_mix,
        default=MIX,
        help=f"operation weights, e.g. enrol=45,crl=20 (default {_DEFAULT_MIX}); an operation left out is "
        "not sent, which tells which one a growth follows",
    )
    args = parser.parse_args(argv)
    result = soak(args.duration, args.rate, threads=args.threads, sample=args.sample, mix=args.mix)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = result["errors_good_requests"] == 0 and result["errors_bad_requests"] == 0
    return 0 if ok and not result["daemon_tracebacks"] else 1


if __name__ == "__main__":
    sys.exit(main())
