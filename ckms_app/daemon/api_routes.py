"""The JSON API over mutual TLS: revoke a certificate, look one up by serial, publish CRLs now; the
terminal's search, export and recall routes are in :mod:`ckms_app.daemon.inventory_routes`.

Every handler authenticates and authorises before it reads the body or parses the path; a body or a
path that cannot be read is a JSON 4xx with an audit record under the caller's entity ID.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.audit.record import record, refusal
from ckms_app.authority.revocation import parse_serial, revoke
from ckms_app.daemon import inventory_routes
from ckms_app.daemon.bodies import read_json_object
from ckms_app.daemon.http import authenticate, authorize, json_error
from ckms_app.daemon.runtime import runtime_of
from ckms_app.errors import CkmsError, NotFound
from ckms_app.store import queries


async def api_revoke(request: web.Request) -> web.Response:
    """``POST /api/v1/revocations``: revocation authorises (role and certificate kind) and audits itself;
    the role is asked here first, before the body is read."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "certificate.revoke", "revocation")
        try:
            body = await json_body(request)
        except CkmsError as exc:
            await record(rt.writer, principal, "certificate.revoke", "revocation", "denied", refusal(exc))
            raise
        done = await revoke(
            rt.writer, principal, str(body.get("serial", "")), body.get("reason", "unspecified")
        )
    except CkmsError as exc:
        return json_error(exc)
    rt.publisher.notify_revocation()
    return web.json_response(
        {
            "serial": done.serial,
            "reason": done.reason,
            "revoked_at": done.revoked_at,
            "crl_within_seconds": rt.config.crl.max_publish_delay_seconds,
        }
    )


async def api_certificate(request: web.Request) -> web.Response:
    """``GET /api/v1/certificates/{serial}``: the stored certificate, its status and any revocation."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "certificate.read", request.match_info["serial"])
        try:
            serial = parse_serial(request.match_info["serial"])
        except CkmsError as exc:
            target = request.match_info["serial"][:64]
            await record(rt.writer, principal, "certificate.read", target, "denied", refusal(exc))
            raise
        with rt.reader.connect() as conn:
            row = queries.certificate_by_serial(conn, serial)
            rev = queries.revocation_by_serial(conn, serial)
        if row is None:
            raise NotFound(f"no certificate with serial {serial} was issued by this CA")
    except CkmsError as exc:
        return json_error(exc)
    cert = x509.load_der_x509_certificate(row.der)
    revocation = (
        None
        if rev is None
        else {"reason": rev.reason, "revoked_at": rev.revoked_at.isoformat(), "revoked_by": rev.revoked_by}
    )
    return web.json_response(
        {
            "serial": row.serial,
            "status": row.status,
            "kind": row.kind,
            "profile": row.profile,
            "subject": row.subject,
            "sans": row.sans,
            "not_before": row.not_before.isoformat(),
            "not_after": row.not_after.isoformat(),
            "issued_at": row.issued_at.isoformat(),
            "requested_by": row.requested_by,
            "revocation": revocation,
            "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        }
    )


async def api_publish_crl(request: web.Request) -> web.Response:
    """``POST /api/v1/crl/publish``: a full and a delta CRL now, signed through the one signer."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "crl.publish", "crl")
        published = await rt.publisher.publish(principal)
    except CkmsError as exc:
        return json_error(exc)
    return web.json_response(
        {
            "full_crl_number": published.full_number,
            "delta_crl_number": published.delta_number,
            "base_crl_number": published.base_number,
            "entries": published.revoked_count,
            "this_update": published.this_update.isoformat(),
        }
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (whole, bounded, shallow), or a 4xx :class:`CkmsError`."""
    return await read_json_object(request, runtime_of(request).config.server.max_request_bytes)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/revocations", api_revoke)
    app.router.add_get("/api/v1/certificates/{serial}", api_certificate)
    app.router.add_post("/api/v1/crl/publish", api_publish_crl)
    inventory_routes.add_routes(app)  # search, export, recall (the terminal's tools)
