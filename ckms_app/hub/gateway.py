"""The IoT hub's gateway: devices connect with their certificates; a revoked one is refused.

Two TLS listeners, both with the hub's own server certificate (how devices and apps authenticate the hub
is outside the CKMS, guidance 1.4 note 9: the lab makes a self-signed one that the relay and devices pin):

* the **device** listener asks every client for a certificate, verifies it to one of the trusted CAs with
  OpenSSL's leaf CRL check against the newest accepted CRL of each CA, checks the serial again in Python
  against the CRL of the leaf's own issuer (found by the leaf's authorityKeyIdentifier), answers
  ``ok <subject>`` and closes. A device whose CA has no usable CRL (none yet, or past its nextUpdate) is
  refused: a hub that cannot know who is revoked must not let anyone in (fail closed); devices of a CA
  whose CRL is current are still let in;
* the **upload** listener takes ``PUT /crl`` (a DER CRL) from the terminal's relay and ``GET /status``.
  An upload is accepted only if :func:`ckms_app.hub.crl_check.check_crl` passes and its number is not
  older than the one held from the same CA, so the carrier needs no credential: it cannot forge, only
  withhold, and withholding is what the staleness alarm (``/status``, the relay) is for.

Several CAs: ``--ca-cert`` may hold several certificates (a CA key rollover keeps the old key, with the
same subject DN, signing CRLs for its certificates). The hub keeps one CRL per CA key in
``<state>/crls/<key id hex>.crl``; a ``current.crl`` left by the one-CA version is moved there on start.

Every decision is one JSON line on stderr (the journal on a host): device accepted/refused with serial
and reason, CRL accepted/rejected with number, issuer and reason.

Why this module is long: the hub is one process whose parts share one state (the trusted CAs, the CRL
held per CA and the device TLS context built from them, swapped as one): loading and migrating the stored
CRLs, accepting uploads, answering ``/status``, the device handshake with its second check, and the
connection slots that guard the device listener. Split across modules, that state would have to be
passed around or shared; the helpers at the end are small and only serve this class.
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ckms_app.config import TLS_CIPHERSUITES, TLS_GROUPS
from ckms_app.daemon.transport import restrict_tls13
from ckms_app.errors import ConfigError, CrlRejected
from ckms_app.hub.crl_check import CheckedCrl, authority_key_id, check_crl, trusted_by_key_id

CRL_DIR = "crls"  # one CRL per CA key: crls/<key id hex>.crl
LEGACY_CRL_FILE = "current.crl"  # the one-CA version's single CRL, migrated on start
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


@dataclass(frozen=True)
class _Held:
    """The CRLs held (one per CA key id) and the device TLS context made from them, swapped as one."""

    crls: dict[str, CheckedCrl]
    ctx: ssl.SSLContext | None


class Hub:
    """The trusted CAs, the CRL held per CA, the device TLS context made from them, and the two listeners."""

    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._ca_pem = settings.ca_cert.read_bytes()
        try:
            self._ca_list = x509.load_pem_x509_certificates(self._ca_pem)
        except ValueError as exc:
            raise ConfigError(f"{settings.ca_cert}: no CA certificate (PEM): {exc}") from None
        self._cas = trusted_by_key_id(self._ca_list)
        self._held = _Held({}, None)
        self._upload_lock = asyncio.Lock()
        self._slots = ConnectionSlots(settings.max_connections, settings.max_per_source)
        crls = self._load_stored()
        if crls:
            self._install(crls)

    def _load_stored(self) -> dict[str, CheckedCrl]:
        """The CRLs kept in ``crls/``, plus a ``current.crl`` of the one-CA version, moved into ``crls/``."""
        crls: dict[str, CheckedCrl] = {}
        for path in sorted((self._settings.state_dir / CRL_DIR).glob("*.crl")):
            checked = self._stored(path)
            if checked is not None and _newer(checked, crls.get(checked.issuer_key_id)):
                crls[checked.issuer_key_id] = checked
        legacy = self._settings.state_dir / LEGACY_CRL_FILE
        checked = self._stored(legacy) if legacy.exists() else None
        if checked is not None:  # an unusable one stays where it is: nothing to migrate, nothing lost
            if _newer(checked, crls.get(checked.issuer_key_id)):
                _atomic_write(self._crl_path(checked.issuer_key_id), checked.der)
                crls[checked.issuer_key_id] = checked
            legacy.unlink()
            _log("crl.migrated", number=checked.number, issuer=checked.issuer_key_id, source=LEGACY_CRL_FILE)
        return crls

    def _stored(self, path: Path) -> CheckedCrl | None:
        try:
            return check_crl(path.read_bytes(), self._ca_list)
        except CrlRejected as exc:  # e.g. expired while the hub was down: wait for the relay
            _log("crl.stored_unusable", file=path.name, reason=str(exc))
            return None

    def _crl_path(self, key_id: str) -> Path:
        return self._settings.state_dir / CRL_DIR / f"{key_id}.crl"

    # --- the held CRLs ------------------------------------------------------------------------
    @property
    def crl(self) -> CheckedCrl | None:
        """The held CRL with the highest number (the one CRL of the one-CA hub)."""
        return _newest(self._held.crls)

    @property
    def crls(self) -> dict[str, CheckedCrl]:
        """The held CRLs by issuer key id (hex)."""
        return dict(self._held.crls)

    def status(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """What ``GET /status`` answers: the whole hub at the top level, each trusted CA under ``issuers``.

        ``issuers`` maps every trusted CA's key id (hex) to ``subject``, ``crl_number`` (None without a
        CRL), ``this_update``, ``next_update``, ``age_s``, ``revoked``, ``usable`` and ``reason``.

        The top-level keys keep their one-CA meaning, so existing readers (the relay of the one-CA
        version, the lab's A.37 check) go on working: ``crl_number``, ``this_update``, ``next_update``,
        ``age_s`` and ``revoked`` describe the held CRL with the highest number (the newest: the CA numbers
        every issuer's CRLs from one sequence); ``usable`` is true only when **every** trusted CA has a
        CRL not past its nextUpdate, since otherwise some devices are refused; ``reason`` says which CA
        lacks one (with one CA, exactly the one-CA wording). With one CA this is the old answer plus
        ``issuers``.
        """
        now = now or dt.datetime.now(dt.UTC)
        held = self._held.crls
        issuers = {key_id: _issuer_status(ca, held.get(key_id), now) for key_id, ca in self._cas.items()}
        lacking = [(key_id, i["reason"]) for key_id, i in issuers.items() if not i["usable"]]
        if len(self._cas) == 1:
            reason = lacking[0][1] if lacking else ""
        else:
            reason = "; ".join(f"CA {key_id}: {why}" for key_id, why in lacking)
        newest = _newest(held)
        if newest is None:
            return {"crl_number": None, "usable": False, "reason": reason, "issuers": issuers}
        return {
            "crl_number": newest.number,
            "this_update": newest.this_update.isoformat(),
            "next_update": newest.next_update.isoformat(),
            "age_s": round(newest.age(now).total_seconds(), 1),
            "revoked": len(newest.revoked_serials),
            "usable": not lacking,
            "reason": reason,
            "issuers": issuers,
        }

    def accept_crl(self, der: bytes) -> tuple[int, str]:
        """Check and keep an uploaded CRL of any trusted CA: (HTTP status, message).

        Replay and same-number-other-content are judged against the CRL held from the same CA only: the
        other CA's numbers say nothing about this one's.
        """
        crls = self._held.crls
        numbers = {key_id: c.number for key_id, c in crls.items()}
        try:
            checked = check_crl(der, self._ca_list, current_numbers=numbers)
        except CrlRejected as exc:
            _log("crl.rejected", reason=str(exc), held=numbers)
            return 422, f"CRL rejected: {exc}"
        key_id = checked.issuer_key_id
        held = crls.get(key_id)
        if held is not None and checked.number == held.number:
            if checked.der == held.der:
                return 200, f"CRL {checked.number} of CA {key_id} already held"
            _log(
                "crl.rejected", reason="same number, different content", number=checked.number, issuer=key_id
            )
            return 409, f"CRL rejected: number {checked.number} of CA {key_id} is held with different content"
        _atomic_write(self._crl_path(key_id), der)
        self._install(crls | {key_id: checked})
        _log("crl.accepted", number=checked.number, issuer=key_id, revoked=len(checked.revoked_serials))
        return 201, f"CRL {checked.number} of CA {key_id} accepted ({len(checked.revoked_serials)} revoked)"

    def _install(self, crls: dict[str, CheckedCrl]) -> None:
        """A new device context: every trusted CA certificate and every held CRL, leaf CRL check on.

        OpenSSL picks the CRL of a leaf's issuer by name and then by the CRL's AKI against the issuer
        certificate, so two CAs of one name each get their own CRL; an issuer without a CRL in the bundle
        fails the handshake ("unable to get certificate CRL"): fail closed per CA.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        restrict_tls13(ctx, TLS_GROUPS, TLS_CIPHERSUITES)
        ctx.load_cert_chain(self._settings.cert, self._settings.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        crl_pems = b"".join(
            x509.load_der_x509_crl(c.der).public_bytes(serialization.Encoding.PEM) for c in crls.values()
        )
        # A file, not cadata: OpenSSL's file lookup loads CRLs as well as certificates, cadata only certificates.
        bundle = self._settings.state_dir / "verify.pem"
        _atomic_write(bundle, self._ca_pem.rstrip(b"\n") + b"\n" + crl_pems)
        ctx.load_verify_locations(cafile=str(bundle))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self._held = _Held(dict(crls), ctx)

    def _issuer_of(self, cert: x509.Certificate) -> str | None:
        """The key id of the trusted CA that signed ``cert``: by its AKI, confirmed by the signature."""
        aki = authority_key_id(cert)
        if aki is None:
            candidates = list(self._cas.items())
        else:
            candidates = [(aki, self._cas[aki])] if aki in self._cas else []
        for key_id, ca in candidates:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return key_id
        return None

    # --- devices ------------------------------------------------------------------------------
    def device_connection(self, sock: socket.socket, source: str) -> None:
        """One device: handshake with the held CRLs' context, answer, close (runs in a thread).

        Plain blocking sockets in a thread per connection: Python 3.11's asyncio cannot upgrade a
        server-side stream to TLS (``StreamWriter.start_tls`` hangs), and a handshake refused inside
        asyncio's own TLS transport would never reach this log. Handshake refusals name the newest held
        CRL (``crl``): OpenSSL does not say which CA's CRL it used; after the handshake, ``crl`` and
        ``issuer`` name the leaf's own CA and its CRL.
        """
        held, now = self._held, dt.datetime.now(dt.UTC)
        newest = _newest({k: c for k, c in held.crls.items() if not c.expired(now)})
        with sock:
            if newest is None or held.ctx is None:
                _log("device.refused", source=source, reason="no current CRL (fail closed)")
                return
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                tls = held.ctx.wrap_socket(sock, server_side=True)
            except ssl.SSLCertVerificationError as exc:
                _log("device.refused", source=source, reason=_verify_reason(exc), crl=newest.number)
                return
            except (ssl.SSLError, OSError) as exc:
                _log("device.refused", source=source, reason=f"handshake failed: {exc}", crl=newest.number)
                return
            with tls:
                der = tls.getpeercert(binary_form=True)
                cert = x509.load_der_x509_certificate(der) if der else None
                refusal, fields = self._second_check(cert, held, now)  # never rely on one layer
                if refusal or cert is None:
                    _log("device.refused", source=source, reason=refusal, **fields)
                    return
                _log("device.accepted", source=source, **fields)
                try:
                    tls.sendall(f"ok {cert.subject.rfc4514_string()}\n".encode())
                except OSError:
                    pass

    def _second_check(
        self, cert: x509.Certificate | None, held: _Held, now: dt.datetime
    ) -> tuple[str, dict[str, Any]]:
        """Python's own look at a leaf OpenSSL let through: ("", log fields) to accept, else (reason, fields).

        The serial is looked up in the CRL of the leaf's own CA (by its AKI): a serial is unique per
        issuer only, and another CA's CRL says nothing about this leaf.
        """
        if cert is None:
            return "no client certificate", {}
        fields: dict[str, Any] = {"serial": f"{cert.serial_number:x}"}
        key_id = self._issuer_of(cert)
        if key_id is None:
            return "issued by none of the trusted CAs", fields
        fields["issuer"] = key_id
        crl = held.crls.get(key_id)
        if crl is None or crl.expired(now):
            return "no current CRL for the device's CA (fail closed)", fields
        fields["crl"] = crl.number
        if cert.serial_number in crl.revoked_serials:
            return "revoked", fields
        return "", fields

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


def _newer(checked: CheckedCrl, held: CheckedCrl | None) -> bool:
    return held is None or checked.number > held.number


def _newest(crls: dict[str, CheckedCrl]) -> CheckedCrl | None:
    """The CRL with the highest number, or None."""
    return max(crls.values(), key=lambda c: c.number, default=None)


def _issuer_status(ca: x509.Certificate, crl: CheckedCrl | None, now: dt.datetime) -> dict[str, Any]:
    """One trusted CA's entry in ``/status``."""
    if crl is None:
        return {
            "subject": ca.subject.rfc4514_string(),
            "crl_number": None,
            "usable": False,
            "reason": "no CRL received yet",
        }
    return {
        "subject": ca.subject.rfc4514_string(),
        "crl_number": crl.number,
        "this_update": crl.this_update.isoformat(),
        "next_update": crl.next_update.isoformat(),
        "age_s": round(crl.age(now).total_seconds(), 1),
        "revoked": len(crl.revoked_serials),
        "usable": not crl.expired(now),
        "reason": "past nextUpdate" if crl.expired(now) else "",
    }


#: OpenSSL's verify codes for "no CRL for this issuer" and "the issuer's CRL has expired".
_NO_CURRENT_CRL = {3, 12}


def _verify_reason(exc: ssl.SSLCertVerificationError) -> str:
    """OpenSSL's verify message; for a missing or expired CRL, said as the fail-closed refusal it is."""
    if exc.verify_code in _NO_CURRENT_CRL:
        return f"no current CRL for the device's CA (fail closed): {exc.verify_message}"
    return str(exc.verify_message)
