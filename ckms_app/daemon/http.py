"""What every route shares: who the TLS peer is, the audited authorisation, and how errors are rendered.

Every protected route calls :func:`authenticate` (the client certificate → an active entity, a refusal
recorded as ``auth.deny``) and, for an operation the authority layer does not check itself,
:func:`authorize` (the role's ACL, a refusal recorded under the individual's entity ID). Errors are
rendered as text for EST clients (:func:`est_error`) and as JSON for the API (:func:`json_error`).
"""

from __future__ import annotations

from aiohttp import web

from ckms_app.audit.record import named, record, refusal
from ckms_app.audit.refusals import RefusalSummary, source_of
from ckms_app.authority.rbac import Principal
from ckms_app.daemon.runtime import Runtime
from ckms_app.errors import CkmsError

EST_RETRY_AFTER = 30  # seconds an EST client is told to wait after a 503
# The worker's refusal accounting (set by the server on both applications); without it, one record each
REFUSALS = web.AppKey("refusals", RefusalSummary)


def est_error(exc: CkmsError, retry_after: int = EST_RETRY_AFTER) -> web.Response:
    """``code: message`` as text; a 503 tells the client when to try again."""
    headers = {"Retry-After": str(retry_after)} if exc.http_status == 503 else None
    return web.Response(
        status=exc.http_status, text=f"{exc.code}: {exc}\n", content_type="text/plain", headers=headers
    )


def json_error(exc: CkmsError) -> web.Response:
    return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)


def peer_der(request: web.Request) -> bytes | None:
    """The client certificate the TLS handshake verified (DER), or None if the client sent none."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object else None


def route_of(request: web.Request) -> str:
    """The route's template (``/.well-known/est/{label}/simpleenroll``), never the path the client sent."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def authenticate(rt: Runtime, request: web.Request) -> Principal:
    """The TLS peer's principal; a refusal is audited (``auth.deny``) before it is raised.

    A known entity whose credential is refused (disabled, revoked, expired) is named in the record.
    Refusals are counted by the worker's :class:`~ckms_app.audit.refusals.RefusalSummary`: the first
    ones of each interval get their own record, the rest one bounded summary record per interval.
    """
    try:
        return rt.principals.resolve(peer_der(request))
    except CkmsError as exc:
        who = named(getattr(exc, "entity_id", "unauthenticated"), getattr(exc, "role", "none"))
        source = source_of(request.remote)
        route = route_of(request)
        summary = request.config_dict.get(REFUSALS)
        if summary is None:
            await record(rt.writer, who, "auth.deny", route, "denied", refusal(exc, peer=source))
        else:
            await summary.refuse(
                who,
                method=request.method,
                route=route,
                reason=exc.code,
                source=source,
                detail=refusal(exc, peer=source),
            )
        raise


async def authorize(
    rt: Runtime, principal: Principal, operation: str, target: str, *, action: str | None = None
) -> None:
    """``principal.require(operation)`` with a refusal recorded under the individual's entity ID, as
    ``action`` (by default the operation itself) on ``target``."""
    try:
        principal.require(operation)
    except CkmsError as exc:
        await record(rt.writer, principal, action or operation, target, "denied", refusal(exc))
        raise
