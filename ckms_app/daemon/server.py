"""``ckms ca serve``: EST (RFC 7030) and the JSON API over mutual TLS 1.3; CRLs over HTTP.

Two listeners: the TLS one for the certificate-management terminal (EST, revocation, lookup,
health) and a plain-HTTP one for CRLs, which are signed and need no transport security. On
SIGTERM the daemon stops accepting connections, lets in-flight requests finish, flushes the
database writer and records the stop in the audit trail.

This module assembles the two applications from the route modules (``est_routes``, ``api_routes``,
``crl_routes``, ``guard_routes``) and runs one worker; :mod:`ckms_app.daemon.supervisor` runs several.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
from collections.abc import Callable

from aiohttp import web

from ckms_app import __version__
from ckms_app.algorithms import curve_of
from ckms_app.audit.alerts import send_alert
from ckms_app.audit.record import SYSTEM, record
from ckms_app.audit.refusals import RefusalSummary
from ckms_app.audit.seals import AuditSealer, config_change_unit, ensure_audit_key
from ckms_app.authority.ca_bundle import generation_certificates, pem_bundle
from ckms_app.config import Config
from ckms_app.cpu_stages import StageClock
from ckms_app.daemon import api_routes, crl_routes, est_routes, guard_routes
from ckms_app.daemon.http import REFUSALS
from ckms_app.daemon.runtime import RUNTIME, Runtime, open_runtime
from ckms_app.daemon.transport import (
    ClientTable,
    ConnectionGuard,
    GuardedSite,
    descriptor_budget,
    quiet_disconnects,
    quiet_malformed_http_logging,
    restrict_tls13,
)
from ckms_app.hsm.token import HsmEcPrivateKey

log = logging.getLogger("ckms.server")


def server_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS 1.3 only, with the configured groups and suites only (A.62, A.64; see ``transport``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrict_tls13(ctx, config.server.tls_groups, config.server.tls_ciphersuites)
    ctx.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    # Every generation of the CA's key: people and the terminal keep their certificates across a rollover
    ctx.load_verify_locations(cadata=pem_bundle(generation_certificates(config)))
    # Optional at the TLS layer so /cacerts and /health work without one and a missing certificate
    # gets an HTTP error that says so; every protected route requires it. A certificate that is
    # presented but not issued by this CA still fails the handshake.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def build_apps(
    rt: Runtime, refusals: RefusalSummary | None = None
) -> tuple[web.Application, web.Application]:
    """The mutual-TLS application (admin, EST, API, health) and the plain-HTTP one (CRLs, health)."""
    middlewares = [quiet_disconnects, guard_routes.fault_middleware, guard_routes.error_state_middleware]
    est = web.Application(client_max_size=rt.config.server.max_request_bytes, middlewares=middlewares)
    est[RUNTIME] = rt
    if refusals is not None:
        est[REFUSALS] = refusals
    guard_routes.add_routes(est)
    est_routes.add_routes(est)
    api_routes.add_routes(est)
    est.router.add_get("/health", crl_routes.health)
    crl = web.Application(client_max_size=1024, middlewares=middlewares)
    crl[RUNTIME] = rt
    if refusals is not None:
        crl[REFUSALS] = refusals
    crl_routes.add_routes(crl)
    return est, crl


async def serve(
    config: Config,
    est_sock: socket.socket,
    crl_sock: socket.socket,
    *,
    worker: int = 0,
    runs_publisher: bool = True,
    on_ready: Callable[[], object] | None = None,
    clients: ClientTable | None = None,
) -> None:
    """Run one worker on already-bound listening sockets until SIGTERM/SIGINT.

    ``clients`` is the supervisor's table of connections per source address, shared by all workers
    (a worker on its own counts alone).
    """
    srv = config.server
    quiet_malformed_http_logging()
    tls = server_ssl_context(config)  # a refused TLS setting stops the start here, before anything opens
    rt = await open_runtime(config, stages=StageClock.from_environment())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if rt.stages.enabled:  # the benchmark asks each worker for its CPU per stage
        loop.add_signal_handler(signal.SIGUSR1, rt.stages.write_snapshot)
    state_task = await guard_routes.startup(rt, worker, stop)  # self-tests; error state on failure (E.32)
    refusals = RefusalSummary(
        rt.writer,
        interval=config.audit.refusal_summary_seconds,
        max_entries=config.audit.refusal_summary_max_entries,
        individual=config.audit.refusal_records_per_interval,
        worker=worker,
    )
    refusals_task = asyncio.create_task(refusals.run(stop))
    est_app, crl_app = build_apps(rt, refusals)
    grace = srv.shutdown_grace_seconds
    idle = srv.keepalive_timeout_seconds
    runners = [
        web.AppRunner(est_app, access_log=None, shutdown_timeout=grace, keepalive_timeout=idle),
        web.AppRunner(crl_app, access_log=None, shutdown_timeout=grace, keepalive_timeout=idle),
    ]
    for runner in runners:
        await runner.setup()
    if clients is None:
        clients = ClientTable(1)
    cap = descriptor_budget(srv.max_connections)
    est_guard = ConnectionGuard("est", srv, clients, refusals, max_connections=cap)
    crl_guard = ConnectionGuard("crl", srv, clients, refusals, max_connections=cap)
    await GuardedSite(runners[0], est_sock, est_guard, ssl_context=tls, shutdown_timeout=grace).start()
    await GuardedSite(runners[1], crl_sock, crl_guard, shutdown_timeout=grace).start()
    started = {"version": __version__, "worker": worker, "est_port": config.server.est_port}
    await record(rt.writer, SYSTEM, "daemon.start", "daemon", "success", started)
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
    drain_started = loop.time()
    est_guard.stop_admitting()
    crl_guard.stop_admitting()
    for runner in runners:
        await runner.cleanup()  # stops accepting, waits for in-flight handlers
    log.info("worker %d: in-flight requests finished in %.2f s", worker, loop.time() - drain_started)
    await refusals_task
    await refusals.flush()  # whatever was refused while draining
    if publisher_task is not None:
        await publisher_task
    await state_task
    await record(
        rt.writer, SYSTEM, "daemon.stop", "daemon", "success", {"reason": "signal", "worker": worker}
    )
    if sealer is not None and sealer_task is not None:
        await sealer_task
        try:
            await sealer.seal_now()
        except Exception:  # noqa: BLE001 - the chain is intact; only the last seal is missing
            log.exception("final audit seal failed")
    await rt.close()
    log.info("worker %d: %d database units in %d commits", worker, rt.writer.units, rt.writer.commits)


async def _audit_config_change(rt: Runtime) -> None:
    """A changed ckms.toml since the last start goes on the trail and raises an alert (F.12, F.15)."""
    row = await rt.writer.submit(config_change_unit(rt.config.home))
    if row is not None and row["detail"] and json.loads(row["detail"]).get("previous_sha256"):
        event = {k: row[k] for k in ("entity_id", "role", "action", "target", "outcome", "detail")}
        event["at"] = row["at"].isoformat()
        await asyncio.to_thread(send_alert, rt.config.alerts, event)


def _audit_sealer(rt: Runtime) -> AuditSealer:
    """Seals the audit chain with the HSM audit key on the CA's curve (loaded or made at the first seal)."""
    audit_config = rt.config.audit
    curve = curve_of(rt.ca_key.public_key())

    def audit_key() -> HsmEcPrivateKey:
        return ensure_audit_key(rt.token, rt.config.home, curve, audit_config.key_label)

    return AuditSealer(audit_config, audit_key, rt.writer, rt.reader)
