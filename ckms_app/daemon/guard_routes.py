"""The daemon's self-protection: start-up self-tests, the error state on the wire, admin self-test
and recovery endpoints (E.32, E.35–E.37, F.24, A.33).

Kept out of :mod:`ckms_app.daemon.server` so the request handlers there stay about requests. Everything
here works on the ``Runtime`` in ``request.app["rt"]`` (``state``, ``guard``, ``ca_key``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ckms_app.authority import selftest
from ckms_app.authority.guard import poll_state
from ckms_app.errors import CkmsError, ErrorStateActive
from ckms_app.store.chain import audit_row
from ckms_app.store.schema import audit_events
from ckms_app.store.writer import Inserts

log = logging.getLogger("ckms.guard")
ADMIN_PREFIX = "/api/v1/admin/"
_EXEMPT = ("/health",)


@web.middleware
async def error_state_middleware(request: web.Request,
                                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """In the error state every request gets 503 and the reason, except health and the admin API."""
    state = request.app["rt"].state
    if state is None or state.reason is None or request.path in _EXEMPT or request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    exc = ErrorStateActive(f"the CA is in the error state: {state.reason}; an administrator must recover it")
    if request.path.startswith("/api/"):
        return web.json_response({"error": exc.code, "message": str(exc)}, status=503)
    return web.Response(status=503, text=f"{exc.code}: {exc}\n", content_type="text/plain",
                        headers={"Retry-After": "60"})


async def health_checks(rt: Any) -> dict[str, str]:
    """Extra health lines: the error state and the clock."""
    checks = {}
    if rt.state is not None:
        rt.state.refresh()
        checks["error_state"] = "ok" if rt.state.reason is None else f"error: {rt.state.reason}"
    if rt.guard is not None and rt.guard.clock.enabled:
        reading = await rt.guard.clock.aread()
        checks["clock"] = "ok" if reading.synchronised else f"error: {reading.reason}"
    return checks


def run_selftests(rt: Any) -> selftest.Report:
    return selftest.run_all(rt.config, rt.ca_key, rt.ca_cert)


async def startup(rt: Any, worker: int, stop: asyncio.Event) -> asyncio.Task[None]:
    """Self-test this worker (E.32); on failure enter the error state. Then follow the shared state."""
    report = await asyncio.to_thread(run_selftests, rt)
    if not report.ok:
        reason = f"start-up self-test failed: {report.reason()}"
        log.error("worker %d: %s", worker, reason)
        rt.state.enter(reason, source=f"worker {worker} start")
    await _audit(rt, "selftest.run", "success" if report.ok else "error",
                 {"worker": worker, "trigger": "start", "reason": report.reason()})

    async def on_change(in_error: bool) -> None:
        if in_error:
            log.error("worker %d: error state: %s", worker, rt.state.reason)
            return
        # Recovered by an administrator. Prove this worker's own token session before serving;
        # a worker whose session did not survive exits and the supervisor starts a fresh one.
        check = await asyncio.to_thread(selftest.pairwise_test, rt.ca_key, rt.ca_cert)
        if not check.ok:
            log.error("worker %d: token session unusable after recovery (%s); restarting", worker, check.detail)
            stop.set()

    return asyncio.create_task(poll_state(rt.state, stop, on_change))


async def _audit(rt: Any, action: str, outcome: str, detail: dict[str, Any], entity: str = "ckms",
                 role: str = "system") -> None:
    row = audit_row(entity_id=entity, role=role, action=action, target="daemon", outcome=outcome, detail=detail)
    await rt.writer.submit(Inserts(((audit_events, row),)))


async def _administrator(rt: Any, request: web.Request, action: str) -> Any:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    try:
        principal = rt.principals.resolve(peer)
        principal.require("hsm.manage")
    except CkmsError as exc:
        await _audit(rt, action, "denied", {"code": exc.code, "reason": str(exc)},
                     entity=getattr(exc, "entity_id", "unauthenticated"), role=getattr(exc, "role", "none"))
        raise
    return principal


async def api_selftest(request: web.Request) -> web.Response:
    """Run the self-tests now; a failure puts the whole daemon in the error state."""
    rt = request.app["rt"]
    try:
        principal = await _administrator(rt, request, "selftest.run")
    except CkmsError as exc:
        return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)
    report = await asyncio.to_thread(run_selftests, rt)
    if not report.ok:
        rt.state.enter(f"self-test failed: {report.reason()}", source=f"api by {principal.entity_id}")
    await _audit(rt, "selftest.run", "success" if report.ok else "error",
                 {"trigger": "api", "reason": report.reason()}, entity=principal.entity_id, role=principal.role)
    body = {**report.as_dict(), **rt.state.as_dict()}
    return web.json_response(body, status=200 if report.ok else 503)


async def api_recover(request: web.Request) -> web.Response:
    """Leave the error state if, and only if, the self-tests pass now."""
    rt = request.app["rt"]
    try:
        principal = await _administrator(rt, request, "daemon.recover")
    except CkmsError as exc:
        return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)
    report = await asyncio.to_thread(run_selftests, rt)
    before = rt.state.reason
    if report.ok:
        rt.state.clear()
    await _audit(rt, "daemon.recover", "success" if report.ok else "denied",
                 {"previous_reason": before, "selftest": report.reason()}, entity=principal.entity_id,
                 role=principal.role)
    body = {"recovered": report.ok, "previous_reason": before, **report.as_dict()}
    return web.json_response(body, status=200 if report.ok else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{ADMIN_PREFIX}selftest", api_selftest)
    app.router.add_post(f"{ADMIN_PREFIX}recover", api_recover)
