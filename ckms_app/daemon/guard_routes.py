"""The daemon's self-protection: start-up self-tests, the error state on the wire, admin self-test
and recovery endpoints (E.32, E.35–E.37, F.24, A.33).

Kept apart from the request handlers so they stay about requests. Everything here works on the
worker's :class:`~ckms_app.daemon.runtime.Runtime` (``state``, ``guard``, ``ca_key``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ckms_app.audit.record import SYSTEM, record
from ckms_app.authority import selftest
from ckms_app.authority.guard import poll_state
from ckms_app.daemon.http import authenticate, authorize, est_error, json_error
from ckms_app.daemon.runtime import RUNTIME, Runtime, runtime_of
from ckms_app.errors import CkmsError, ErrorStateActive

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


async def health_checks(rt: Runtime) -> dict[str, str]:
    """Extra health lines: the error state and the clock."""
    rt.state.refresh()
    checks = {"error_state": "ok" if rt.state.reason is None else f"error: {rt.state.reason}"}
    if rt.guard.clock.enabled:
        reading = await rt.guard.clock.aread()
        checks["clock"] = "ok" if reading.synchronised else f"error: {reading.reason}"
    return checks


def run_selftests(rt: Runtime) -> selftest.Report:
    return selftest.run_all(rt.config, rt.ca_key, rt.ca_cert)


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
