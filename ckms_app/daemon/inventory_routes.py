"""The terminal's daily API: search the inventory with paging, export it, and recall devices in one batch.

``GET /api/v1/certificates`` (filters + ``limit`` + opaque ``cursor``), ``GET /api/v1/inventory`` (the same
filters, every page streamed as CSV or JSON) and ``POST /api/v1/recalls`` (revoke many certificates by
device ID or serial in one audited all-or-nothing batch, or a dry run). As everywhere in the API, the
caller is authenticated and authorised (``certificate.read`` or ``certificate.revoke``) before the query
string or the body is read; a query or body that cannot be read is a JSON 400 audited under the caller.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import datetime as dt
import io
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Row

from ckms_app.audit.record import record, refusal
from ckms_app.authority.rbac import Principal
from ckms_app.authority.revocation import (
    RecallPlan,
    new_batch_id,
    parse_recall,
    parse_serial,
    plan_recall,
    recall,
)
from ckms_app.daemon.bodies import read_json_object
from ckms_app.daemon.http import authenticate, authorize, json_error
from ckms_app.daemon.runtime import Runtime, runtime_of
from ckms_app.errors import BadRequest, CkmsError
from ckms_app.store import inventory
from ckms_app.store.schema import utcnow

DEFAULT_LIMIT = 100
EXPORT_PAGE = 1000
RECALL_MAX_BYTES = 1 << 20  # 10,000 names of up to 64 characters fit; a bigger body is refused unread
_QUERY_KEYS = {
    "status",
    "profile",
    "kind",
    "device_id",
    "subject_contains",
    "serial",
    "issued_from",
    "issued_to",
    "expires_from",
    "expires_to",
    "limit",
    "cursor",
    "format",
}
CSV_FIELDS = (
    "serial",
    "device_id",
    "subject",
    "status",
    "kind",
    "profile",
    "not_before",
    "not_after",
    "issued_at",
    "requested_by",
    "revoked_at",
    "revocation_reason",
    "revoked_by",
)


def _time(name: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: {value[:40]!r} is not an ISO 8601 date or date-time") from None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def encode_cursor(serial: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{serial}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> str:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith("v1:"):
        raise BadRequest("cursor is not one this API handed out")
    return parse_serial(text[3:])


def parse_query(query: Mapping[str, str]) -> tuple[inventory.Filters, str | None, int]:
    """The filters, the cursor's serial and the page size of a query string, or a :class:`BadRequest`."""
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0][:40]!r}; accepted: {', '.join(sorted(_QUERY_KEYS))}"
        )
    status = query.get("status")
    if status is not None and status not in inventory.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(inventory.STATUSES)}")
    device_id = query.get("device_id")
    if device_id is not None and not inventory.DEVICE_ID.fullmatch(device_id):
        raise BadRequest(f"device_id {device_id[:64]!r} is not a device ID ({inventory.DEVICE_ID.pattern})")
    subject = query.get("subject_contains")
    if subject is not None and not 1 <= len(subject) <= 256:
        raise BadRequest("subject_contains must be 1 to 256 characters")
    for key in ("profile", "kind"):
        if key in query and not 1 <= len(query[key]) <= 64:
            raise BadRequest(f"{key} must be 1 to 64 characters")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= inventory.MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {inventory.MAX_LIMIT}")
    filters = inventory.Filters(
        status=status,
        profile=query.get("profile"),
        kind=query.get("kind"),
        device_id=device_id,
        subject_contains=subject,
        serial=parse_serial(query["serial"]) if "serial" in query else None,
        issued_from=_time("issued_from", query.get("issued_from")),
        issued_to=_time("issued_to", query.get("issued_to")),
        expires_from=_time("expires_from", query.get("expires_from")),
        expires_to=_time("expires_to", query.get("expires_to")),
    )
    cursor = decode_cursor(query["cursor"]) if "cursor" in query else None
    return filters, cursor, limit


def item(row: Row[Any], now: dt.datetime) -> dict[str, Any]:
    """One certificate as the API lists it (status ``expired`` when valid but past notAfter)."""
    status = "expired" if row.status == "valid" and row.not_after <= now else row.status
    return {
        "serial": row.serial,
        "device_id": inventory.device_id_of(row.subject) if row.kind == "end-entity" else None,
        "subject": row.subject,
        "status": status,
        "kind": row.kind,
        "profile": row.profile,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "issued_at": row.issued_at.isoformat(),
        "requested_by": row.requested_by,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revocation_reason": row.reason,
        "revoked_by": row.revoked_by,
    }


async def _read_query(rt: Runtime, principal: Principal, request: web.Request, action: str) -> Any:
    try:
        return parse_query(request.query)
    except CkmsError as exc:
        await record(rt.writer, principal, action, "inventory", "denied", refusal(exc))
        raise


async def api_search(request: web.Request) -> web.Response:
    """``GET /api/v1/certificates?…``: one page of matching certificates and the cursor of the next."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "certificate.read", "inventory")
        filters, cursor, limit = await _read_query(rt, principal, request, "certificate.read")
    except CkmsError as exc:
        return json_error(exc)
    now = utcnow()
    with rt.reader.connect() as conn:
        rows, following = inventory.search(conn, filters, after=cursor, limit=limit, now=now)
    return web.json_response(
        {
            "items": [item(r, now) for r in rows],
            "next_cursor": None if following is None else encode_cursor(following),
        }
    )


async def api_export(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/inventory?format=csv|json&…``: every matching certificate, read and sent page by page."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "certificate.read", "inventory", action="inventory.export")
        filters, cursor, _ = await _read_query(rt, principal, request, "inventory.export")
        fmt = request.query.get("format", "json")
        if fmt not in ("csv", "json"):
            exc = BadRequest("format must be csv or json")
            await record(rt.writer, principal, "inventory.export", "inventory", "denied", refusal(exc))
            raise exc
    except CkmsError as exc:
        return json_error(exc)
    shown = {k: v for k, v in request.query.items() if k != "cursor"}
    await record(rt.writer, principal, "inventory.export", "inventory", "success", {"query": shown})
    resp = web.StreamResponse(
        headers={"Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json"}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    now = utcnow()
    if fmt == "csv":
        await resp.write(_csv_line(CSV_FIELDS))
    else:
        await resp.write(b"[")
    first = True
    while True:
        with rt.reader.connect() as conn:
            rows, cursor = inventory.search(conn, filters, after=cursor, limit=EXPORT_PAGE, now=now)
        for row in rows:
            doc = item(row, now)
            if fmt == "csv":
                await resp.write(_csv_line(tuple("" if doc[f] is None else str(doc[f]) for f in CSV_FIELDS)))
            else:
                await resp.write((b"" if first else b",") + b"\n" + json.dumps(doc).encode())
            first = False
        if cursor is None:
            break
    if fmt == "json":
        await resp.write(b"\n]\n")
    await resp.write_eof()
    return resp


def _csv_line(values: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    # Spreadsheet formula injection: a cell starting with = + - @ is quoted as text by a leading apostrophe.
    csv.writer(out, lineterminator="\r\n").writerow(
        "'" + v if v[:1] in ("=", "+", "-", "@") else v for v in values
    )
    return out.getvalue().encode()


def plan_json(plan: RecallPlan, *, dry_run: bool) -> dict[str, Any]:
    return {
        "batch": None if dry_run else plan.batch,
        "dry_run": dry_run,
        "by": plan.by,
        "reason": plan.reason,
        "revoked" if not dry_run else "would_revoke": [
            {"serial": t.serial, "name": t.named_by, "subject": t.subject} for t in plan.to_revoke
        ],
        "already_revoked": [{"serial": t.serial, "name": t.named_by} for t in plan.already_revoked],
        "not_found": list(plan.not_found),
        "revoked_at": plan.revoked_at,
    }


async def api_recall(request: web.Request) -> web.Response:
    """``POST /api/v1/recalls`` ``{"by": "device_id"|"serial", "names": [...], "reason": R, "dry_run": bool}``."""
    rt = runtime_of(request)
    try:
        principal = await authenticate(rt, request)
        await authorize(rt, principal, "certificate.revoke", "recall", action="certificate.recall")
        try:
            body = await read_json_object(request, RECALL_MAX_BYTES)
            by, names, reason = parse_recall(
                body.get("by"), body.get("names"), body.get("reason", "unspecified")
            )
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise BadRequest("dry_run must be true or false")
        except CkmsError as exc:
            await record(rt.writer, principal, "certificate.recall", "recall", "denied", refusal(exc))
            raise
        batch = "dry-run" if dry_run else new_batch_id()
        plan = await asyncio.to_thread(_plan, rt, batch, by, names, reason)
        if dry_run:
            return web.json_response(plan_json(plan, dry_run=True))
        done = await recall(rt.writer, principal, plan, names)
    except CkmsError as exc:
        return json_error(exc)
    if done.to_revoke:
        rt.publisher.notify_revocation()
    return web.json_response(
        {**plan_json(done, dry_run=False), "crl_within_seconds": rt.config.crl.max_publish_delay_seconds}
    )


def _plan(rt: Runtime, batch: str, by: str, names: list[str], reason: str) -> RecallPlan:
    with rt.reader.connect() as conn:
        return plan_recall(conn, batch, by, names, reason)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/certificates", api_search)
    app.router.add_get("/api/v1/inventory", api_export)
    app.router.add_post("/api/v1/recalls", api_recall)
