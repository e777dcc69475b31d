"""The IoT hub's gateway: devices connect with their certificates; a revoked one is refused.

Two TLS listeners, both with the hub's own server certificate (how devices and apps authenticate the hub
is outside the CKMS, guidance 1.4 note 9: the lab makes a self-signed one that the relay and devices pin):

* the **device** listener asks every client for a certificate, verifies it to the CA with OpenSSL's
  leaf CRL check against the newest accepted CRL, checks the serial against that CRL again in Python,
  answers ``ok <subject>`` and closes. Without a usable CRL (none yet, or past its nextUpdate) it refuses
  every device: a hub that cannot know who is revoked must not let anyone in (fail closed);
* the **upload** listener takes ``PUT /crl`` (a DER CRL) from the terminal's relay and ``GET /status``.
  An upload is accepted only if :func:`ckms_app.hub.crl_check.check_crl` passes and its number is not
  older than the held one, so the carrier needs no credential: it cannot forge, only withhold, and
  withholding is what the staleness alarm (``/status``, the relay) is for.

Every decision is one JSON line on stderr (the journal on a host): device accepted/refused with serial
and reason, CRL accepted/rejected with number and reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.config import TLS_CIPHERSUITES, TLS_GROUPS
from ckms_app.daemon.transport import restrict_tls13
from ckms_app.errors import CrlRejected
from ckms_app.hub.crl_check import CheckedCrl, check_crl

CRL_FILE = "current.crl"
MAX_CRL_BYTES = 64 * 1024 * 1024  # a 100,000-entry CRL is about 4 MB
HANDSHAKE_TIMEOUT_S = 10.0
# A device holds a connection for one handshake and one line; a source holding more is misbehaving (or a
# flood), and one source must not take every thread of the hub from the others.
MAX_CONNECTIONS = 256
MAX_PER_SOURCE = 8


@dataclass(frozen=True)
class HubSettings:
    """Where the hub keeps its state and how it listens."""

    ca_cert: Path
    state_dir: Path
    cert: Path
    key: Path
    bind: str  # the hub's address on its segment; no default: never every interface by accident
    device_port: int = 8443
    upload_port: int = 8444
    max_connections: int = MAX_CONNECTIONS
    max_per_source: int = MAX_PER_SOURCE


class ConnectionSlots:
    """Device connections held at once, in all and per source address; refusals logged at most once a
    second per source (a flood must not flood the log as well)."""

    def __init__(self, total: int, per_source: int) -> None:
        self._total, self._per_source = total, per_source
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._in_use = 0
        self._refused: dict[str, tuple[float, int]] = {}  # source -> (last logged, refused since)

    def take(self, source: str) -> bool:
        with self._lock:
            if self._in_use >= self._total or self._held.get(source, 0) >= self._per_source:
                last, count = self._refused.get(source, (0.0, 0))
                now = time.monotonic()
                if now - last >= 1.0:
                    _log("device.refused", source=source, reason="too many connections", refused=count + 1)
                    self._refused[source] = (now, 0)
                else:
                    self._refused[source] = (last, count + 1)
                return False
            self._held[source] = self._held.get(source, 0) + 1
            self._in_use += 1
            self._refused.pop(source, None)  # a source that gets in again starts a new refusal count
            return True

    def give(self, source: str) -> None:
        with self._lock:
            if source not in self._held:
                return
            self._in_use -= 1
            left = self._held[source] - 1
            if left > 0:
                self._held[source] = left
            else:
                self._held.pop(source, None)


def _log(event: str, **fields: Any) -> None:
    line = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": event, **fields}
    print(json.dumps(line, sort_keys=True), file=sys.stderr, flush=True)


class Hub:
    """The held CRL, the device TLS context made from it, and the two listeners."""

    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._ca_pem = settings.ca_cert.read_bytes()
        self._ca = x509.load_pem_x509_certificate(self._ca_pem)
        self._crl: CheckedCrl | None = None
        self._device_ctx: ssl.SSLContext | None = None
        self._upload_lock = asyncio.Lock()
        self._slots = ConnectionSlots(settings.max_connections, settings.max_per_source)
        stored = settings.state_dir / CRL_FILE
        if stored.exists():
            try:
                self._install(check_crl(stored.read_bytes(), self._ca))
            except CrlRejected as exc:  # e.g. expired while the hub was down: wait for the relay
                _log("crl.stored_unusable", reason=str(exc))

    # --- the held CRL -------------------------------------------------------------------------
    @property
    def crl(self) -> CheckedCrl | None:
        return self._crl

    def status(self, now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.UTC)
        crl = self._crl
        if crl is None:
            return {"crl_number": None, "usable": False, "reason": "no CRL received yet"}
        return {
            "crl_number": crl.number,
            "this_update": crl.this_update.isoformat(),
            "next_update": crl.next_update.isoformat(),
            "age_s": round(crl.age(now).total_seconds(), 1),
            "revoked": len(crl.revoked_serials),
            "usable": not crl.expired(now),
            "reason": "past nextUpdate" if crl.expired(now) else "",
        }

    def accept_crl(self, der: bytes) -> tuple[int, str]:
        """Check and keep an uploaded CRL: (HTTP status, message)."""
        held = self._crl
        try:
            checked = check_crl(der, self._ca, current_number=held.number if held else None)
        except CrlRejected as exc:
            _log("crl.rejected", reason=str(exc), held=held.number if held else None)
            return 422, f"CRL rejected: {exc}"
        if held is not None and checked.number == held.number:
            if checked.der == held.der:
                return 200, f"CRL {checked.number} already held"
            _log("crl.rejected", reason="same number, different content", number=checked.number)
            return 409, f"CRL rejected: number {checked.number} is held with different content"
        _atomic_write(self._settings.state_dir / CRL_FILE, der)
        self._install(checked)
        _log("crl.accepted", number=checked.number, revoked=len(checked.revoked_serials))
        return 201, f"CRL {checked.number} accepted ({len(checked.revoked_serials)} revoked)"

    def _install(self, crl: CheckedCrl) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        restrict_tls13(ctx, TLS_GROUPS, TLS_CIPHERSUITES)
        ctx.load_cert_chain(self._settings.cert, self._settings.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        crl_pem = x509.load_der_x509_crl(crl.der).public_bytes(serialization.Encoding.PEM)
        # A file, not cadata: OpenSSL's file lookup loads CRLs as well as certificates, cadata only certificates.
        bundle = self._settings.state_dir / "verify.pem"
        _atomic_write(bundle, self._ca_pem + crl_pem)
        ctx.load_verify_locations(cafile=str(bundle))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self._device_ctx, self._crl = ctx, crl

    # --- devices ------------------------------------------------------------------------------
    def device_connection(self, sock: socket.socket, source: str) -> None:
        """One device: handshake with the current CRL's context, answer, close (runs in a thread).

        Plain blocking sockets in a thread per connection: Python 3.11's asyncio cannot upgrade a
        server-side stream to TLS (``StreamWriter.start_tls`` hangs), and a handshake refused inside
        asyncio's own TLS transport would never reach this log.
        """
        crl, ctx = self._crl, self._device_ctx
        with sock:
            if crl is None or ctx is None or crl.expired(dt.datetime.now(dt.UTC)):
                _log("device.refused", source=source, reason="no current CRL (fail closed)")
                return
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                tls = ctx.wrap_socket(sock, server_side=True)
            except ssl.SSLCertVerificationError as exc:
                _log("device.refused", source=source, reason=exc.verify_message, crl=crl.number)
                return
            except (ssl.SSLError, OSError) as exc:
                _log("device.refused", source=source, reason=f"handshake failed: {exc}", crl=crl.number)
                return
            with tls:
                der = tls.getpeercert(binary_form=True)
                cert = x509.load_der_x509_certificate(der) if der else None
                if cert is None or cert.serial_number in crl.revoked_serials:  # never rely on one layer
                    serial = f"{cert.serial_number:x}" if cert else None
                    _log("device.refused", source=source, serial=serial, reason="revoked", crl=crl.number)
                    return
                _log("device.accepted", source=source, serial=f"{cert.serial_number:x}", crl=crl.number)
                try:
                    tls.sendall(f"ok {cert.subject.rfc4514_string()}\n".encode())
                except OSError:
                    pass

    def device_server(self) -> socketserver.ThreadingTCPServer:
        hub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                source = str(self.client_address[0])
                if not hub._slots.take(source):
                    return  # closed at once (socketserver shuts the socket down)
                try:
                    hub.device_connection(self.request, source)
                finally:
                    hub._slots.give(source)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            # socketserver's default backlog of 5 would drop a fleet's reconnect burst before the slots
            # (max_connections) ever see it
            request_queue_size = 128

        server = Server((self._settings.bind, self._settings.device_port), Handler)
        server.daemon_threads = True
        return server

    # --- the relay's side ---------------------------------------------------------------------
    def upload_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CRL_BYTES)

        async def put_crl(request: web.Request) -> web.Response:
            if request.content_type not in ("application/pkix-crl", "application/octet-stream"):
                return web.Response(status=415, text="send the CRL as application/pkix-crl (DER)\n")
            der = await request.read()
            async with self._upload_lock:
                status, message = await asyncio.to_thread(self.accept_crl, der)
            return web.Response(status=status, text=message + "\n")

        async def get_status(request: web.Request) -> web.Response:
            return web.json_response(self.status())

        app.router.add_put("/crl", put_crl)
        app.router.add_get("/status", get_status)
        return app

    def upload_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        restrict_tls13(ctx, TLS_GROUPS, TLS_CIPHERSUITES)
        ctx.load_cert_chain(self._settings.cert, self._settings.key)
        return ctx


async def serve(settings: HubSettings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Run both listeners until ``stop`` is set."""
    hub = Hub(settings)
    devices = hub.device_server()
    threading.Thread(target=devices.serve_forever, name="hub-devices", daemon=True).start()
    runner = web.AppRunner(hub.upload_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.bind, settings.upload_port, ssl_context=hub.upload_context())
    await site.start()
    _log("hub.ready", device_port=settings.device_port, upload_port=settings.upload_port, **hub.status())
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(devices.shutdown)
        devices.server_close()
        await runner.cleanup()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".crl-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
