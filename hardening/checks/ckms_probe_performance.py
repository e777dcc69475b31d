"""Load generator and CA-host probes for the performance and scale checks (A.37-A.42, E.33).

Not a test module. Two kinds of command, one file (sent to the host and run there):

* on the certificate-management terminal, with the system python (standard library only), as an
  operator's own Linux account with their own credential: EST enrolments and revocations over
  keep-alive mutual-TLS connections (the real client path, through the router), the CSRs (base64
  DER, one a line) on stdin, made on the controller;

      python3 ckms_probe_performance.py enrol --clients C [--rate R] [--duration D] ...  < csrs
      python3 ckms_probe_performance.py cycle ...     < csrs   # one connection: issue all, revoke all
      python3 ckms_probe_performance.py revoke SERIAL ...

* on the CA host, by ``ckms_checks.probe(..., script="ckms_probe_performance.py")`` with the CA's
  python as the CA user: read-only lookups and work on scratch copies only;

      python ckms_probe_performance.py stored SERIAL ...     # which serials the database holds
      python ckms_probe_performance.py overload --conns N    # more connections than the caps, briefly
      python ckms_probe_performance.py operators --count N   # N operators in a scratch copy of the DB

JSON on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import sys
import threading
import time
from typing import Any


# --- a lean keep-alive HTTP/1.1 client (as ckms_lab.bench's, any method) ---------------------------------
class Conn:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None, timeout: float = 30) -> None:
        self.host, self.port, self.ctx, self.timeout = host, port, ctx, timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.buf = b""
        return self.ctx.wrap_socket(raw, server_hostname=self.host) if self.ctx else raw

    def request(self, method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = self._open()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body or method == "POST":
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        length = int(fields.get(b"content-length", b"0"))
        self.buf = rest
        while len(self.buf) < length:
            self._more()
        out, self.buf = self.buf[:length], self.buf[length:]
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, out

    def _more(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            self.close()
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def stats(latencies: list[float]) -> dict[str, Any]:
    return {
        "n": len(latencies),
        "p50_ms": _pct(latencies, 0.50),
        "p95_ms": _pct(latencies, 0.95),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies) * 1000, 2) if latencies else None,
    }


# --- the serial number of the certificate in an EST (PKCS#7 certs-only) response ----------------------------
def _tlv(b: bytes, i: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``i``."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i : i + k], "big")
        i += k
    return tag, i, i + n


def _children(b: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, i = [], start
    while i < end:
        tag, s, e = _tlv(b, i)
        out.append((tag, s, e))
        i = e
    return out


def est_serial(body: bytes) -> str:
    """ContentInfo > [0] > SignedData > certificates [0] > Certificate > TBS > serialNumber, as hex."""
    der = base64.b64decode(body)
    _, s, e = _tlv(der, 0)
    _, s, e = next(c for c in _children(der, s, e) if c[0] == 0xA0)
    _, s, e = _tlv(der, s)  # SignedData
    _, s, e = next(c for c in _children(der, s, e) if c[0] == 0xA0)  # certificates
    _, s, e = _tlv(der, s)  # first Certificate
    _, s, e = _tlv(der, s)  # TBSCertificate
    fields = _children(der, s, e)
    tag, s, e = fields[1] if fields[0][0] == 0xA0 else fields[0]
    assert tag == 0x02, "no serialNumber in the certificate"
    return format(int.from_bytes(der[s:e], "big"), "x")


# --- terminal side: the operator's client --------------------------------------------------------------------
def _client(args) -> tuple[str, int, ssl.SSLContext]:
    url = args.url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = url.rpartition(":")
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(args.cert, args.key)
    return host.strip("[]"), int(port or 8443), ctx


def _csrs() -> list[bytes]:
    return [line.strip().encode() for line in sys.stdin if line.strip()]


EST = "/.well-known/est/simpleenroll"
PKCS10 = "application/pkcs10"


def cmd_enrol(args) -> dict[str, Any]:
    """``clients`` keep-alive connections; closed loop (``rate`` 0) or open loop at ``rate``/s (latency
    from when a request was due, so a slow server cannot hide behind its own backlog)."""
    host, port, ctx = _client(args)
    csrs = _csrs()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    serials: list[str] = []
    done_at: list[float] = []
    nxt = [0]
    start = time.monotonic() + 0.3
    conns = [Conn(host, port, ctx) for _ in range(args.clients)]
    for c in conns:  # handshakes before the clock starts: the steady state is measured
        c.sock = c._open()

    def worker(conn: Conn) -> None:
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(csrs):
                return
            due = start + i / args.rate if args.rate else time.monotonic()
            if args.rate:
                if due > start + args.duration:
                    return
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
            elif time.monotonic() > start + args.duration:
                return
            try:
                status, body = conn.request("POST", EST, csrs[i], PKCS10)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                serial = est_serial(body)
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            now = time.monotonic()
            with lock:
                latencies.append(now - due)
                serials.append(serial)
                done_at.append(now)

    while time.monotonic() < start:
        time.sleep(0.01)
    pool = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for c in conns:
        c.close()
    elapsed = (max(done_at) - start) if done_at else 0.0
    return {
        "clients": args.clients,
        "mode": f"open loop at {args.rate}/s" if args.rate else "closed loop",
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 3),
        "ok": len(latencies),
        "error_count": len(errors),
        "errors": errors[:5],
        "certs_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "latency": stats(latencies),
        "serials": serials,
    }


def cmd_cycle(args) -> dict[str, Any]:
    """One warm keep-alive connection: every CSR enrolled one after the other, then every certificate
    revoked one after the other (each request's client-side round trip)."""
    host, port, ctx = _client(args)
    conn = Conn(host, port, ctx)
    csrs = _csrs()
    conn.sock = conn._open()
    issued, revoked, serials, errors = [], [], [], []
    for csr in csrs:
        t0 = time.monotonic()
        status, body = conn.request("POST", EST, csr, PKCS10)
        dt = time.monotonic() - t0
        if status != 200:
            errors.append(f"enrol HTTP {status}: {body[:200]!r}")
            continue
        issued.append(dt)
        serials.append(est_serial(body))
    for serial in serials:
        doc = json.dumps({"serial": serial, "reason": "superseded"}).encode()
        t0 = time.monotonic()
        status, body = conn.request("POST", "/api/v1/revocations", doc, "application/json")
        dt = time.monotonic() - t0
        if status != 200:
            errors.append(f"revoke HTTP {status}: {body[:200]!r}")
            continue
        revoked.append(dt)
    conn.close()
    return {
        "issuance": stats(issued),
        "revocation": stats(revoked),
        "error_count": len(errors),
        "errors": errors[:5],
        "serials": serials,
    }


def cmd_revoke(args) -> dict[str, Any]:
    host, port, ctx = _client(args)
    conn = Conn(host, port, ctx)
    out = []
    for serial in args.serial:
        doc = json.dumps({"serial": serial, "reason": "superseded"}).encode()
        status, body = conn.request("POST", "/api/v1/revocations", doc, "application/json")
        out.append({"serial": serial, "status": status, "at": time.time(), "body": body.decode()[:300]})
    conn.close()
    return {"revocations": out}


# --- CA host side --------------------------------------------------------------------------------------------
def _config():
    from pathlib import Path

    from ckms_app.config import load_config

    return load_config(Path(os.environ["CKMS_HOME"]))


def cmd_stored(args) -> dict[str, Any]:
    from sqlalchemy import select

    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import certificates

    wanted = [s.lower() for s in args.serial]
    found: dict[str, dict[str, str]] = {}
    with open_engine(_config().database_url).connect() as conn:
        for i in range(0, len(wanted), 200):
            q = select(certificates.c.serial, certificates.c.requested_by, certificates.c.subject).where(
                certificates.c.serial.in_(wanted[i : i + 200])
            )
            for r in conn.execute(q):
                found[r.serial] = {"requested_by": r.requested_by, "subject": r.subject}
    return {
        "asked": len(wanted),
        "found": len(found),
        "missing": sorted(set(wanted) - set(found)),
        "rows": found,
    }


def _flood_one(
    host: str, port: int, tls: bool, request: bytes, hold: threading.Barrier
) -> tuple[socket.socket | None, str]:
    """One connection of the flood: connect (TLS: handshake), wait for all, send the request, read the
    status line. Returns the socket (kept open: an admitted connection holds its slot) and the outcome:
    an HTTP status, 'closed' (refused at a cap) or 'timeout'."""
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((host, port), timeout=15)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # load only: nothing here is trusted
            sock = ctx.wrap_socket(sock, server_hostname=host)
    except TimeoutError:
        return sock, "timeout"
    except OSError:
        return sock, "closed"
    try:
        hold.wait(timeout=20)
    except threading.BrokenBarrierError:
        pass
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return sock, "closed"
            data += chunk
        return sock, data.split(b" ", 2)[1].decode()
    except TimeoutError:
        return sock, "timeout"
    except OSError:  # reset, TLS alert or EOF: closed by the server
        return sock, "closed"


def cmd_overload(args) -> dict[str, Any]:
    """``conns`` simultaneous connections, split between the CRL listener (plain, GET the full CRL) and
    the EST listener (TLS handshake, GET cacerts), more than the per-client cap over both: all connect,
    then all send at once. Then every connection is closed, and the time until /health answers again."""
    srv = _config().server
    host = srv.listen
    tls = args.conns // 3  # handshakes cost the most; a third keeps the flood to a few seconds
    plan = [(srv.crl_port, False, "/crl/full.crl")] * (args.conns - tls) + [
        (srv.est_port, True, "/.well-known/est/cacerts")
    ] * tls
    hold = threading.Barrier(len(plan))
    results: list[tuple[str, socket.socket | None, str]] = []
    lock = threading.Lock()

    def one(port: int, tls: bool, path: str) -> None:
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()  # keep-alive: each holds its slot
        sock, got = _flood_one(host, port, tls, req, hold)
        with lock:
            results.append(("est" if tls else "crl", sock, got))

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flood_s = time.monotonic() - t0
    outcomes: dict[str, int] = {}
    per_listener: dict[str, dict[str, int]] = {"crl": {}, "est": {}}
    for listener, sock, got in results:
        outcomes[got] = outcomes.get(got, 0) + 1
        per_listener[listener][got] = per_listener[listener].get(got, 0) + 1
        if sock is not None:
            sock.close()
    t1 = time.monotonic()
    recovered_after = None
    probe_status = None
    while time.monotonic() - t1 < args.recover_within:
        try:
            c = Conn(host, srv.crl_port, None, timeout=5)
            probe_status, _ = c.request("GET", "/health")
            c.close()
            if probe_status == 200:
                recovered_after = round(time.monotonic() - t1, 3)
                break
        except OSError:
            pass
        time.sleep(0.1)
    return {
        "target": f"{host} CRL :{srv.crl_port} (plain) and EST :{srv.est_port} (TLS)",
        "connections": len(plan),
        "outcomes": outcomes,
        "per_listener": per_listener,
        "flood_seconds": round(flood_s, 3),
        "max_connections_per_client": srv.max_connections_per_client,
        "max_connections_per_worker": srv.max_connections,
        "health_after": probe_status,
        "recovered_after_s": recovered_after,
    }


def cmd_operators(args) -> dict[str, Any]:
    """``count`` operators registered in a scratch copy of the live database, by the same checks and
    writes an approved ``entity add`` runs (people_changes.check/apply), then each made active with a
    stand-in credential and resolved by the daemon's own principal lookup (rbac.resolve_principal)."""
    import datetime as dt
    import shutil
    import sqlite3
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from sqlalchemy import func, select, update

    from ckms_app.authority import people_changes, rbac
    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import entities, entity_roles, utcnow

    url = _config().database_url
    if not url.startswith("sqlite:///"):
        return {"skipped": f"database is not SQLite ({url.split(':', 1)[0]}): no scratch copy made"}
    scratch = tempfile.mkdtemp(prefix="ckms-check-a39-")
    try:
        copy = os.path.join(scratch, "ckms.sqlite3")
        src = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        src.backup(dst)  # a consistent copy of the live WAL database
        src.close()
        dst.close()
        engine = open_engine(f"sqlite:///{copy}")
        with engine.connect() as conn:
            before = conn.execute(
                select(func.count()).select_from(entity_roles).where(entity_roles.c.role == "operator")
            ).scalar()
        key = ec.generate_private_key(ec.SECP256R1())
        t0 = time.monotonic()
        refused: list[str] = []
        ders: dict[str, bytes] = {}
        now = utcnow()
        for i in range(1, args.count + 1):
            eid = f"check-perf-op-{i:03d}"
            payload = {"entity_id": eid, "roles": ["operator"]}
            try:
                with engine.begin() as conn:
                    people_changes.check(conn, "entity.create", payload, "check-a39")
                    people_changes.apply(conn, "entity.create", payload, "check-a39", now)
            except Exception as exc:  # the model refused the n-th operator
                refused.append(f"{eid}: {type(exc).__name__}: {exc}")
                continue
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, eid)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, eid)]))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .sign(key, hashes.SHA256())
            )
            ders[eid] = cert.public_bytes(serialization.Encoding.DER)
            with engine.begin() as conn:
                conn.execute(
                    update(entities)
                    .where(entities.c.entity_id == eid)
                    .values(status="active", cert_sha256=rbac.certificate_fingerprint(ders[eid]))
                )
        registered_s = time.monotonic() - t0
        resolved, may_issue, wrong = 0, 0, []
        t1 = time.monotonic()
        with engine.connect() as conn:
            acl = rbac.load_acl(conn)
            for eid, der in ders.items():
                try:
                    principal, _ = rbac.resolve_principal(conn, der, acl)
                except Exception as exc:
                    wrong.append(f"{eid}: {type(exc).__name__}: {exc}")
                    continue
                if principal.entity_id != eid:
                    wrong.append(f"{eid} resolved as {principal.entity_id}")
                    continue
                resolved += 1
                may_issue += principal.allows("certificate.issue", "profile:device")
            after = conn.execute(
                select(func.count()).select_from(entity_roles).where(entity_roles.c.role == "operator")
            ).scalar()
        engine.dispose()
        return {
            "scratch": scratch,
            "operators_live_db": before,
            "operators_after": after,
            "added": len(ders),
            "refused": refused[:5],
            "resolved": resolved,
            "may_issue_device_certificates": may_issue,
            "wrong": wrong[:5],
            "register_seconds": round(registered_s, 3),
            "resolve_ms_each": round((time.monotonic() - t1) / max(1, len(ders)) * 1000, 3),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("enrol", "cycle", "revoke"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--cafile", required=True)
        p.add_argument("--cert", required=True)
        p.add_argument("--key", required=True)
        if name == "enrol":
            p.add_argument("--clients", type=int, default=4)
            p.add_argument("--rate", type=float, default=0.0)
            p.add_argument("--duration", type=float, default=10.0)
        if name == "revoke":
            p.add_argument("serial", nargs="+")
    st = sub.add_parser("stored")
    st.add_argument("serial", nargs="*")
    ov = sub.add_parser("overload")
    ov.add_argument("--conns", type=int, required=True)
    ov.add_argument("--recover-within", type=float, default=10.0)
    op = sub.add_parser("operators")
    op.add_argument("--count", type=int, default=100)
    args = ap.parse_args(argv)
    fn = {
        "enrol": cmd_enrol,
        "cycle": cmd_cycle,
        "revoke": cmd_revoke,
        "stored": cmd_stored,
        "overload": cmd_overload,
        "operators": cmd_operators,
    }[args.cmd]
    print(json.dumps(fn(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
