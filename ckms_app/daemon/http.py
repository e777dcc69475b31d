"""What every route shares: who the TLS peer is, the audited authorisation, and how errors are rendered.

Every protected route calls :func:`authenticate` (the client certificate → an active entity, a refusal
recorded as ``auth.deny``) and, for an operation the authority layer does not check itself,
:func:`authorize` (the role's ACL, a refusal recorded under the individual's entity ID). Errors are
rendered as text for EST clients (:func:`est_error`) and as JSON for the API (:func:`json_error`); the
machine ``code`` is always English, the sentence for people is in the language the request's
``Accept-Language`` prefers (English by default, Japanese on request: :mod:`ckms_app.i18n`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ckms_app.audit.record import named, record, refusal
from ckms_app.audit.refusals import RefusalSummary, source_of
from ckms_app.authority.rbac import Principal
from ckms_app.daemon.runtime import Runtime
from ckms_app.errors import CkmsError
from ckms_app.i18n import DEFAULT, accept_language, localise_error

EST_RETRY_AFTER = 30  # seconds an EST client is told to wait after a 503
# The worker's refusal accounting (set by the server on both applications); without it, one record each
REFUSALS = web.AppKey("refusals", RefusalSummary)


class ErrorResponse(web.Response):
    """An error answer whose sentence for people is put in the request's language when it is sent.

    The routes build it where the error is caught, without the request at hand; :meth:`prepare` is the
    first moment the request is known, and nothing has been written yet (headers, ``Content-Length``
    and body are all computed after it). English is the text the route made, unchanged.
    """

    def __init__(
        self,
        exc: CkmsError,
        render: Callable[[str], str],
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            status=exc.http_status, text=render(DEFAULT), content_type=content_type, headers=headers
        )
        self._render = render

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        lang = accept_language(request.headers.get("Accept-Language"))
        if lang != DEFAULT and not self.prepared:
            self.text = self._render(lang)
            self.headers["Content-Language"] = lang
        return await super().prepare(request)


def est_error(exc: CkmsError, retry_after: int = EST_RETRY_AFTER) -> web.Response:
    """``code: message`` as text; a 503 tells the client when to try again."""
    headers = {"Retry-After": str(retry_after)} if exc.http_status == 503 else None

    def render(lang: str) -> str:
        return f"{exc.code}: {localise_error(exc.code, str(exc), lang)}\n"

    return ErrorResponse(exc, render, "text/plain", headers=headers)


def json_error(exc: CkmsError) -> web.Response:
    """``{"error": code, "message": sentence}``: the code stays English, the sentence follows the request."""

    def render(lang: str) -> str:
        doc = {"error": exc.code, "message": localise_error(exc.code, str(exc), lang)}
        return json.dumps(doc, ensure_ascii=lang == DEFAULT)  # English: exactly json_response's bytes

    return ErrorResponse(exc, render, "application/json")


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
