"""The daemon's self-protection: start-up self-tests, the error state on the wire, admin self-test
and recovery endpoints (E.32, E.35–E.37, F.24, A.33).

Kept apart from the request handlers so they stay about requests. Everything here works on the
worker's :class:`~ckms_app.daemon.runtime.Runtime` (``state``, ``guard``, ``ca_key``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ckms_app.audit.alerts import send_alert
from ckms_app.audit.record import SYSTEM, event, record
from ckms_app.authority import selftest
from ckms_app.authority.guard import poll_state
from ckms_app.daemon.bodies import connection_unusable
from ckms_app.daemon.http import authenticate, authorize, est_error, json_error
from ckms_app.daemon.runtime import RUNTIME, Runtime, runtime_of
from ckms_app.errors import CkmsError, ErrorStateActive, InternalFault
from ckms_app.store.schema import audit_events
from ckms_app.store.writer import Inserts

log = logging.getLogger("ckms.guard")
ADMIN_PREFIX = "/api/v1/admin/"
ERROR_STATE_RETRY_AFTER = 60  # seconds: recovery takes an administrator
_EXEMPT = ("/health",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_state_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In the error state every request gets 503 and the reason, except health and the admin API."""
    state = request.app[RUNTIME].state
    if state.reason is None or request.path in _EXEMPT or request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    exc = ErrorStateActive(f"the CA is in the error state: {state.reason}; an administrator must recover it")
    if request.path.startswith("/api/"):
        return json_error(exc)
    return est_error(exc, retry_after=ERROR_STATE_RETRY_AFTER)


_ALERTS: set[asyncio.Task[Any]] = set()  # alerts on their way (a webhook may take its timeout)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The last line: anything a handler did not turn into an answer becomes one, audited.

    Client input never gets here (every parser raises a 4xx :class:`CkmsError` that its handler renders
    and records); what does is a fault of ckms itself: a bug, a lost database. The client gets a 500
    naming a fault ID and no detail; the trail gets a ``daemon.fault`` record with that ID, the log
    the traceback, and the administrators an alert.
    """
    try:
        response = await handler(request)
        if connection_unusable(request):
            response.force_close()
        return response
    except (web.HTTPException, ConnectionError):
        raise  # aiohttp's own answers (404 for an unknown path, 413); a client that went away
    except CkmsError as exc:
        if exc.http_status < 500:
            return _render(request, exc)  # a refusal a handler forgot to render: still the client's
        return await _fault(request, exc)
    except Exception as exc:  # noqa: BLE001 - the point of the boundary
        return await _fault(request, exc)


async def _fault(request: web.Request, exc: Exception) -> web.Response:
    rt = request.app[RUNTIME]
    fault_id = secrets.token_hex(6)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    log.error("internal fault %s on %s %s", fault_id, request.method, route, exc_info=exc)
    detail = {
        "fault": fault_id,
        "method": request.method,
        "error": type(exc).__name__,
        "message": str(exc)[:200],
    }
    try:
        row = event(SYSTEM, "daemon.fault", route, "error", detail)
        await rt.writer.submit(Inserts(((audit_events, row),)))
        alert = {k: row[k] for k in ("entity_id", "role", "action", "target", "outcome", "detail")}
        alert["at"] = row["at"].isoformat()
        task = asyncio.create_task(asyncio.to_thread(send_alert, rt.config.alerts, alert))
        _ALERTS.add(task)
        task.add_done_callback(_ALERTS.discard)
    except Exception:  # noqa: BLE001 - the trail itself failed: the log line above is what is left
        log.exception("internal fault %s could not be recorded", fault_id)
    return _render(request, InternalFault(f"internal error (fault {fault_id}); it is on the audit trail"))


def _render(request: web.Request, exc: CkmsError) -> web.Response:
    return json_error(exc) if request.path.startswith("/api/") else est_error(exc)


async def health_checks(rt: Runtime) -> dict[str, str]:
    """Extra health lines: the error state and the clock."""
    rt.state.refresh()
    checks = {"error_state": "ok" if rt.state.reason is None else f"error: {rt.state.reason}"}
    if rt.guard.clock.enabled:
        reading = await rt.guard.clock.aread()
        checks["clock"] = "ok" if reading.synchronised else f"error: {reading.reason}"
    return checks


def run_selftests(rt: Runtime) -> selftest.Report:
    retired = [(g.generation, key, cert) for g, key, cert in rt.retired_keys]
    return selftest.run_all(rt.config, rt.ca_key, rt.ca_cert, retired)


async def startup(rt: Runtime, worker: int, stop: asyncio.Event) -> asyncio.Task[None]:
    """Self-test this worker (E.32); on failure enter the error state. Then follow the shared state."""
    report = await asyncio.to_thread(run_selftests, rt)
    if not report.ok:
        reason = f"start-up self-test failed: {report.reason()}"
        log.error("worker %d: %s", worker, reason)
        rt.state.enter(reason, source=f"worker {worker} start")
    outcome = "success" if report.ok else "error"
    detail = {"worker": worker, "trigger": "start", "reason": report.reason()}
    await record(rt.writer, SYSTEM, "selftest.run", "daemon", outcome, detail)

    async def on_change(in_error: bool) -> None:
        if in_error:
            log.error("worker %d: error state: %s", worker, rt.state.reason)
            return
        # Recovered by an administrator. Prove this worker's own token session before serving;
        # a worker whose session did not survive exits and the supervisor starts a fresh one.
        check = await asyncio.to_thread(selftest.pairwise_test, rt.ca_key, rt.ca_cert)
        if not check.ok:
            log.error(
                "worker %d: token session unusable after recovery (%s); restarting", worker, check.detail
            )
            stop.set()

    return asyncio.create_task(poll_state(rt.state, stop, on_change))


async def api_selftest(request: web.Request) -> web.Response:
    """Run the self-tests now; a failure puts the whole daemon in the error state."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "hsm.manage", "daemon", action="selftest.run")
    except CkmsError as exc:
        return json_error(exc)
    report = await asyncio.to_thread(run_selftests, rt)
    if not report.ok:
        rt.state.enter(f"self-test failed: {report.reason()}", source=f"api by {principal.entity_id}")
    outcome = "success" if report.ok else "error"
    await record(
        rt.writer, principal, "selftest.run", "daemon", outcome, {"trigger": "api", "reason": report.reason()}
    )
    body = {**report.as_dict(), **rt.state.as_dict()}
    return web.json_response(body, status=200 if report.ok else 503)


async def api_recover(request: web.Request) -> web.Response:
    """Leave the error state if, and only if, the self-tests pass now."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "hsm.manage", "daemon", action="daemon.recover")
    except CkmsError as exc:
        return json_error(exc)
    report = await asyncio.to_thread(run_selftests, rt)
    before = rt.state.reason
    if report.ok:
        rt.state.clear()
    outcome = "success" if report.ok else "denied"
    detail = {"previous_reason": before, "selftest": report.reason()}
    await record(rt.writer, principal, "daemon.recover", "daemon", outcome, detail)
    body = {"recovered": report.ok, "previous_reason": before, **report.as_dict()}
    return web.json_response(body, status=200 if report.ok else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{ADMIN_PREFIX}selftest", api_selftest)
    app.router.add_post(f"{ADMIN_PREFIX}recover", api_recover)
