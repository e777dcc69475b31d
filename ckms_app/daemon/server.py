"""``ckms ca serve``: EST (RFC 7030) and the JSON API over mutual TLS 1.3; CRLs over HTTP.

Two listeners: the TLS one for the certificate-management terminal (EST, revocation, lookup,
health) and a plain-HTTP one for CRLs, which are signed and need no transport security. On
SIGTERM the daemon stops accepting connections, lets in-flight requests finish, flushes the
database writer and records the stop in the audit trail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import desc, select, text

from ckms_app import __version__
from ckms_app.authority.crl_publisher import CrlPublisher, latest_crl_der
from ckms_app.authority.guard import ServiceState, SigningGuard, make_guard
from ckms_app.authority.issuance import Issuer
from ckms_app.authority.linter import AsyncLinter, find_linter_binary
from ckms_app.authority.rbac import SYSTEM, Principal, PrincipalCache
from ckms_app.authority.revocation import parse_serial, revoke
from ckms_app.authority.signer import Signer
from ckms_app.config import Config
from ckms_app.daemon import guard_routes as server_guard
from ckms_app.errors import CkmsError, NotFound
from ckms_app.hsm.token import Token
from ckms_app.store.chain import append_audit, audit_row
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import certificates, revocations
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509 import est_encoding

log = logging.getLogger("ckms.server")
PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"


@dataclass
class Runtime:
    """Everything the handlers share; built once at start, torn down once at stop."""

    config: Config
    token: Token
    ca_cert: x509.Certificate
    cacerts_body: bytes
    writer: GroupCommitWriter
    reader: Any
    linter: AsyncLinter | None
    issuer: Issuer
    publisher: CrlPublisher
    principals: PrincipalCache
    ca_key: Any = None
    state: ServiceState | None = None  # the error state shared by all workers (E.36)
    guard: SigningGuard | None = None  # asked before every signature: error state + clock (A.33)


def server_ssl_context(config: Config) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    ctx.load_verify_locations(cafile=str(config.ca_cert))
    # Optional at the TLS layer so /cacerts and /health work without one and a missing certificate
    # gets an HTTP error that says so; every protected route requires it. A certificate that is
    # presented but not issued by this CA still fails the handshake.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _peer_der(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object else None


def _principal(rt: Runtime, request: web.Request) -> Principal:
    return rt.principals.resolve(_peer_der(request))


def _est_error(exc: CkmsError) -> web.Response:
    headers = {"Retry-After": "30"} if exc.http_status == 503 else None
    return web.Response(status=exc.http_status, text=f"{exc.code}: {exc}\n", content_type="text/plain",
                        headers=headers)


def _json_error(exc: CkmsError) -> web.Response:
    return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)


async def _audit_denial(rt: Runtime, request: web.Request, exc: CkmsError) -> None:
    # A known entity whose credential is refused (disabled, revoked, expired) is named in the record.
    row = audit_row(entity_id=getattr(exc, "entity_id", "unauthenticated"), role=getattr(exc, "role", "none"),
                    action="auth.deny", target=request.path, outcome="denied",
                    detail={"code": exc.code, "reason": str(exc), "peer": str(request.remote)})
    await rt.writer.submit(lambda c: append_audit(c, [row]))


async def _authorize(rt: Runtime, principal: Principal, operation: str, target: str) -> None:
    """``principal.require`` with the refusal recorded under the individual's entity ID."""
    try:
        principal.require(operation)
    except CkmsError as exc:
        row = audit_row(entity_id=principal.entity_id, role=principal.role, action=operation, target=target,
                        outcome="denied", detail={"code": exc.code, "reason": str(exc)})
        await rt.writer.submit(lambda c: append_audit(c, [row]))
        raise


async def _authenticated(rt: Runtime, request: web.Request) -> Principal:
    """The request's principal; a refusal is audited before it is returned to the client."""
    try:
        return _principal(rt, request)
    except CkmsError as exc:
        await _audit_denial(rt, request, exc)
        raise


# --- EST ---------------------------------------------------------------------------------------
async def est_cacerts(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    return web.Response(body=rt.cacerts_body, headers={"Content-Type": PKCS7_CERTS,
                                                       "Content-Transfer-Encoding": "base64"})


async def est_csrattrs(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    profile = rt.config.profile(request.match_info.get("label"))
    body = base64.encodebytes(est_encoding.csr_attributes(rt.issuer.hash_name, profile.allowed_curves))
    return web.Response(body=body, headers={"Content-Type": "application/csrattrs",
                                            "Content-Transfer-Encoding": "base64"})


async def est_enroll(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    renew = request.path.endswith("/simplereenroll")
    try:
        try:
            principal = _principal(rt, request)
        except CkmsError as exc:
            await _audit_denial(rt, request, exc)
            raise
        action = "certificate.reissue" if renew else "certificate.issue"
        try:
            csr_der = await _read_est_body(request, rt.config.csr.max_bytes)
            renewing = _current_certificate_for(rt, csr_der) if renew else None
        except CkmsError as exc:
            await rt.issuer.record_refusal(principal, action, request.match_info.get("label", "default"), exc)
            raise
        issued = await rt.issuer.enroll(csr_der, principal, profile_name=request.match_info.get("label"),
                                        renewing=renewing)
    except CkmsError as exc:
        return _est_error(exc)
    body = base64.encodebytes(pkcs7.serialize_certificates([issued.certificate], serialization.Encoding.DER))
    return web.Response(body=body, headers={"Content-Type": PKCS7_CERTS, "Content-Transfer-Encoding": "base64"})


async def _read_est_body(request: web.Request, max_bytes: int) -> bytes:
    from ckms_app.errors import CsrRejected

    # base64 grows the DER by 4/3 plus line breaks; allow for that before decoding.
    limit = max_bytes * 4 // 3 + max_bytes // 32 + 64
    if request.content_length is not None and request.content_length > limit:
        raise CsrRejected(f"request is {request.content_length} bytes; the limit is {limit} (base64)",
                          code="csr_too_large")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise CsrRejected(f"request exceeds {limit} bytes (base64)", code="csr_too_large")
    ctype = request.headers.get("Content-Type", "")
    if ctype and not ctype.startswith("application/pkcs10"):
        raise CsrRejected(f"Content-Type must be application/pkcs10, not {ctype}", code="csr_content_type")
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CsrRejected("body is not base64: EST expects a base64-encoded DER PKCS#10 request",
                          code="csr_malformed") from None


def _current_certificate_for(rt: Runtime, csr_der: bytes) -> x509.Certificate:
    """The newest valid end-entity certificate with the request's subject: what is being renewed."""
    from ckms_app.errors import CsrRejected

    try:
        subject = x509.load_der_x509_csr(csr_der).subject.rfc4514_string()
    except ValueError as exc:
        raise CsrRejected(f"not a DER PKCS#10 request: {exc}", code="csr_malformed") from None
    with rt.reader.connect() as conn:
        row = conn.execute(
            select(certificates.c.der).where(certificates.c.subject == subject, certificates.c.status == "valid",
                                             certificates.c.kind == "end-entity")
            .order_by(desc(certificates.c.issued_at)).limit(1)).first()
    if row is None:
        raise CsrRejected(f"no valid certificate with subject {subject} to renew", code="csr_reenroll_unknown")
    return x509.load_der_x509_certificate(row.der)


# --- JSON API ----------------------------------------------------------------------------------
async def api_revoke(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    try:
        principal = await _authenticated(rt, request)
        body = await _json_body(request)
        done = await revoke(rt.writer, principal, str(body.get("serial", "")), body.get("reason", "unspecified"))
    except CkmsError as exc:
        return _json_error(exc)
    rt.publisher.notify_revocation()
    return web.json_response({"serial": done.serial, "reason": done.reason, "revoked_at": done.revoked_at,
                              "crl_within_seconds": rt.config.crl.max_publish_delay_seconds})


async def api_certificate(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    try:
        principal = await _authenticated(rt, request)
        await _authorize(rt, principal, "certificate.read", request.match_info["serial"])
        serial = parse_serial(request.match_info["serial"])
        with rt.reader.connect() as conn:
            row = conn.execute(select(certificates).where(certificates.c.serial == serial)).first()
            rev = conn.execute(select(revocations).where(revocations.c.serial == serial)).first()
        if row is None:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
    except CkmsError as exc:
        return _json_error(exc)
    cert = x509.load_der_x509_certificate(row.der)
    return web.json_response({
        "serial": row.serial, "status": row.status, "kind": row.kind, "profile": row.profile,
        "subject": row.subject, "sans": row.sans, "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(), "issued_at": row.issued_at.isoformat(),
        "requested_by": row.requested_by,
        "revocation": None if rev is None else {"reason": rev.reason, "revoked_at": rev.revoked_at.isoformat(),
                                                "revoked_by": rev.revoked_by},
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    })


async def api_publish_crl(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    try:
        principal = await _authenticated(rt, request)
        await _authorize(rt, principal, "crl.publish", "crl")
        published = await rt.publisher.publish(principal)
    except CkmsError as exc:
        return _json_error(exc)
    return web.json_response({"full_crl_number": published.full_number, "delta_crl_number": published.delta_number,
                              "base_crl_number": published.base_number, "entries": published.revoked_count,
                              "this_update": published.this_update.isoformat()})


async def _json_body(request: web.Request) -> dict[str, Any]:
    from ckms_app.errors import BadRequest

    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


# --- CRL + health -------------------------------------------------------------------------------
async def crl_file(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    which = request.match_info["which"]
    with rt.reader.connect() as conn:
        der = latest_crl_der(conn, which)
    if der is None:
        return web.Response(status=404, text="no CRL published yet\n")
    return web.Response(body=der, content_type="application/pkix-crl")


async def ca_certificate(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    return web.Response(body=rt.ca_cert.public_bytes(serialization.Encoding.DER), content_type="application/pkix-cert")


async def health(request: web.Request) -> web.Response:
    rt: Runtime = request.app["rt"]
    checks: dict[str, str] = {}
    try:
        with rt.reader.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - health reports any failure
        checks["database"] = f"error: {type(exc).__name__}"
    checks["hsm"] = "ok" if rt.token.is_alive() else "error: token session lost"
    if rt.linter is not None:
        checks["linter"] = "ok" if rt.linter.alive else "error: linter process exited"
    checks.update(await server_guard.health_checks(rt))
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if ok else "error", "version": __version__, "checks": checks},
                             status=200 if ok else 503)


def build_apps(rt: Runtime) -> tuple[web.Application, web.Application]:
    max_size = rt.config.server.max_request_bytes
    est = web.Application(client_max_size=max_size, middlewares=[server_guard.error_state_middleware])
    est["rt"] = rt
    server_guard.add_routes(est)
    for prefix in ("/.well-known/est", "/.well-known/est/{label}"):
        est.router.add_get(f"{prefix}/cacerts", est_cacerts)
        est.router.add_get(f"{prefix}/csrattrs", est_csrattrs)
        est.router.add_post(f"{prefix}/simpleenroll", est_enroll)
        est.router.add_post(f"{prefix}/simplereenroll", est_enroll)
    est.router.add_post("/api/v1/revocations", api_revoke)
    est.router.add_get("/api/v1/certificates/{serial}", api_certificate)
    est.router.add_post("/api/v1/crl/publish", api_publish_crl)
    est.router.add_get("/health", health)
    crl = web.Application(client_max_size=1024, middlewares=[server_guard.error_state_middleware])
    crl["rt"] = rt
    crl.router.add_get("/crl/{which:full|delta|base}.crl", crl_file)
    crl.router.add_get("/crl/ca.crt", ca_certificate)
    crl.router.add_get("/health", health)
    return est, crl


async def open_runtime(config: Config) -> Runtime:
    token = Token(config.token)
    key = token.load_ec_key(config.ca_key_label)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    chain = [ca_cert]
    if config.ca_chain is not None and config.ca_chain.exists():
        chain += x509.load_pem_x509_certificates(config.ca_chain.read_bytes())
    engine = open_engine(config.database_url)
    migrate(engine)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    linter = await AsyncLinter.start(find_linter_binary(config.lint_binary)) if config.lint_enabled else None
    guard = make_guard(config, writer)
    signer = Signer(key, linter, guard)
    issuer = Issuer(config, signer, ca_cert, writer, engine)
    publisher = CrlPublisher(config, signer, ca_cert, writer, engine)
    cacerts = base64.encodebytes(pkcs7.serialize_certificates(chain, serialization.Encoding.DER))
    return Runtime(config, token, ca_cert, cacerts, writer, engine, linter, issuer, publisher, PrincipalCache(engine),
                   ca_key=key, state=guard.state, guard=guard)


async def serve(config: Config, est_sock: socket.socket, crl_sock: socket.socket, *, worker: int = 0,
                runs_publisher: bool = True, on_ready: Callable[[], None] | None = None) -> None:
    """Run one worker on already-bound listening sockets until SIGTERM/SIGINT."""
    rt = await open_runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state_task = await server_guard.startup(rt, worker, stop)  # self-tests; error state on failure (E.32)
    est_app, crl_app = build_apps(rt)
    grace = config.server.shutdown_grace_seconds
    runners = [web.AppRunner(est_app, access_log=None, shutdown_timeout=grace),
               web.AppRunner(crl_app, access_log=None, shutdown_timeout=grace)]
    for runner in runners:
        await runner.setup()
    await web.SockSite(runners[0], est_sock, ssl_context=server_ssl_context(config), shutdown_timeout=grace).start()
    await web.SockSite(runners[1], crl_sock, shutdown_timeout=grace).start()
    await _audit_system(rt, "daemon.start", {"version": __version__, "worker": worker,
                                             "est_port": config.server.est_port})
    # One worker schedules CRLs; any worker may publish on request (the CRL number is a primary key).
    publisher_task = asyncio.create_task(rt.publisher.run(stop)) if runs_publisher else None
    # The same worker seals the audit chain with the HSM audit key (created here on first use).
    sealer = _audit_sealer(rt) if runs_publisher else None
    sealer_task = asyncio.create_task(sealer.run(stop)) if sealer is not None else None
    if runs_publisher:
        await _audit_config_change(rt)
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("worker %d stopping: finishing in-flight requests (up to %.0f s)", worker, grace)
    for runner in runners:
        await runner.cleanup()  # stops accepting, waits for in-flight handlers
    if publisher_task is not None:
        await publisher_task
    await state_task
    await _audit_system(rt, "daemon.stop", {"reason": "signal", "worker": worker})
    if sealer is not None and sealer_task is not None:
        await sealer_task
        try:
            await sealer.seal_now()
        except Exception:  # noqa: BLE001 - the chain is intact; only the last seal is missing
            log.exception("final audit seal failed")
    if rt.linter is not None:
        await rt.linter.close()
    rt.issuer.close()
    rt.principals.close()
    rt.writer.close()
    log.info("worker %d: %d database units in %d commits", worker, rt.writer.units, rt.writer.commits)
    rt.token.close()


async def _audit_config_change(rt: Runtime) -> None:
    """A changed ckms.toml since the last start goes on the trail and raises an alert (F.12, F.15)."""
    from ckms_app.audit.alerts import send_alert
    from ckms_app.audit.seals import config_change_unit

    row = await rt.writer.submit(config_change_unit(rt.config.home))
    if row is not None and row["detail"] and json.loads(row["detail"]).get("previous_sha256"):
        event = {k: row[k] for k in ("entity_id", "role", "action", "target", "outcome", "detail")}
        event["at"] = row["at"].isoformat()
        await asyncio.to_thread(send_alert, rt.config.alerts, event)


def _audit_sealer(rt: Runtime) -> Any:
    from ckms_app.algorithms import curve_of
    from ckms_app.audit.seals import AuditSealer, ensure_audit_key

    audit_config = rt.config.audit
    curve = curve_of(rt.ca_cert.public_key())  # type: ignore[arg-type]
    return AuditSealer(audit_config, lambda: ensure_audit_key(rt.token, rt.config.home, curve, audit_config.key_label),
                       rt.writer, rt.reader)


async def _audit_system(rt: Runtime, action: str, detail: dict[str, Any]) -> None:
    row = audit_row(entity_id=SYSTEM.entity_id, role=SYSTEM.role, action=action, target="daemon",
                    outcome="success", detail=detail)
    await rt.writer.submit(lambda c: append_audit(c, [row]))
