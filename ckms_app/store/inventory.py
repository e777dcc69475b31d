"""The certificate inventory: search with filters, keyset paging, and lookup by device ID.

**Device ID.** The device profile requires exactly one subject CN, checked against the profile's
``subject_cn_pattern`` and named "device ID" in its refusal (``x509.csr_policy``); the terminal's
``ckms-enroll DEVICE-ID`` makes ``/CN=DEVICE-ID``. So a certificate's device ID is its subject CN.
Device IDs here are restricted to ``[A-Za-z0-9][A-Za-z0-9._:-]{0,63}``: none of these characters needs
escaping in an RFC 4514 string, so ``CN=<id>`` appears verbatim as one comma-separated component of the
stored ``subject`` and can be matched with ``LIKE`` (then confirmed in Python against escaped commas).

**Paging.** Rows come in serial order (the primary key) after a cursor naming the last serial seen: a
page is one index range scan, stable while certificates are issued meanwhile (a row is returned at most
once; rows inserted behind the cursor are not), and no offset is ever counted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.engine import Connection, Row

from ckms_app.store.schema import certificates, revocations

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
STATUSES = ("valid", "revoked", "expired")
MAX_LIMIT = 1000
# Device IDs per query: four LIKE terms each keeps the OR chain far below SQLite's expression depth (1000).
_DEVICE_CHUNK = 100
_SCAN_ABOVE = 1000
_SPLIT = re.compile(r"(?<!\\)[,+]")


@dataclass(frozen=True)
class Filters:
    """What a search may ask; every field optional. Times are aware UTC; ranges are half-open [from, to)."""

    status: str | None = None  # valid (and not expired) | revoked | expired (not revoked, past notAfter)
    profile: str | None = None
    kind: str | None = None
    device_id: str | None = None
    subject_contains: str | None = None
    serial: str | None = None
    issued_from: dt.datetime | None = None
    issued_to: dt.datetime | None = None
    expires_from: dt.datetime | None = None
    expires_to: dt.datetime | None = None


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _device_terms(device_id: str) -> list[ColumnElement[bool]]:
    exact = f"CN={device_id}"
    lit = _like_literal(exact)
    subject = certificates.c.subject
    return [
        subject == exact,
        subject.like(f"{lit},%", escape="\\"),
        subject.like(f"%,{lit}", escape="\\"),
        subject.like(f"%,{lit},%", escape="\\"),
    ]


def device_id_of(subject: str) -> str | None:
    """The CN of a stored RFC 4514 subject when it is a device ID, else None."""
    for part in _SPLIT.split(subject):
        name, sep, value = part.partition("=")
        if sep and name.strip().upper() == "CN" and DEVICE_ID.fullmatch(value):
            return value
    return None


def _where(filters: Filters, now: dt.datetime) -> list[ColumnElement[bool]]:
    c = certificates.c
    terms: list[ColumnElement[bool]] = []
    if filters.status == "valid":
        terms += [c.status == "valid", c.not_after > now]
    elif filters.status == "revoked":
        terms.append(c.status == "revoked")
    elif filters.status == "expired":
        terms += [c.status == "valid", c.not_after <= now]
    if filters.profile is not None:
        terms.append(c.profile == filters.profile)
    if filters.kind is not None:
        terms.append(c.kind == filters.kind)
    if filters.device_id is not None:
        terms.append(or_(*_device_terms(filters.device_id)))
    if filters.subject_contains is not None:
        terms.append(c.subject.like(f"%{_like_literal(filters.subject_contains)}%", escape="\\"))
    if filters.serial is not None:
        terms.append(c.serial == filters.serial)
    if filters.issued_from is not None:
        terms.append(c.issued_at >= filters.issued_from)
    if filters.issued_to is not None:
        terms.append(c.issued_at < filters.issued_to)
    if filters.expires_from is not None:
        terms.append(c.not_after >= filters.expires_from)
    if filters.expires_to is not None:
        terms.append(c.not_after < filters.expires_to)
    return terms


_COLUMNS = (
    certificates.c.serial,
    certificates.c.kind,
    certificates.c.profile,
    certificates.c.subject,
    certificates.c.sans,
    certificates.c.not_before,
    certificates.c.not_after,
    certificates.c.issued_at,
    certificates.c.requested_by,
    certificates.c.status,
    revocations.c.reason,
    revocations.c.revoked_at,
    revocations.c.revoked_by,
)


def search(
    conn: Connection, filters: Filters, *, after: str | None, limit: int, now: dt.datetime
) -> tuple[list[Row[Any]], str | None]:
    """At most ``limit`` certificates matching ``filters`` with serial > ``after``, in serial order, and the
    serial to continue after (None on the last page). Without the DER: listing is for people and
    spreadsheets; one certificate's PEM is a lookup away."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}")
    terms = _where(filters, now)
    if after is not None:
        terms.append(certificates.c.serial > after)
    raw = cast(
        "list[Row[Any]]",
        conn.execute(
            select(*_COLUMNS)
            .select_from(certificates.outerjoin(revocations, revocations.c.serial == certificates.c.serial))
            .where(*terms)
            .order_by(certificates.c.serial)
            .limit(limit + 1)
        ).all(),
    )
    more = len(raw) > limit
    raw = raw[:limit]
    following = raw[-1].serial if more else None
    if filters.device_id is None:
        return raw, following
    return [r for r in raw if device_id_of(r.subject) == filters.device_id], following


@dataclass(frozen=True)
class Target:
    """One certificate a recall names: how it was named (device ID or serial) and its current state."""

    serial: str
    kind: str
    status: str
    subject: str
    named_by: str


def certificates_of_devices(conn: Connection, device_ids: Sequence[str]) -> list[Target]:
    """Every device (end-entity) certificate whose subject CN is one of ``device_ids``, valid or revoked.

    Up to :data:`_SCAN_ABOVE` IDs: one query per :data:`_DEVICE_CHUNK` IDs. Above that (a large recall),
    one streamed pass over the device certificates, matched in Python against a set: the cost no longer
    grows with the length of the list.
    """
    wanted = set(device_ids)
    columns = (certificates.c.serial, certificates.c.kind, certificates.c.status, certificates.c.subject)
    if len(wanted) > _SCAN_ABOVE:
        result = conn.execute(
            select(*columns)
            .where(certificates.c.kind == "end-entity")
            .order_by(certificates.c.serial)
            .execution_options(yield_per=5000)
        )
        rows: list[Row[str, str, str, str]] = []
        for r in result:
            if device_id_of(r.subject) in wanted:
                rows.append(r)
    else:
        rows = []
        ids = sorted(wanted)
        for start in range(0, len(ids), _DEVICE_CHUNK):
            chunk = ids[start : start + _DEVICE_CHUNK]
            rows += conn.execute(
                select(*columns)
                .where(
                    certificates.c.kind == "end-entity", or_(*[t for d in chunk for t in _device_terms(d)])
                )
                .order_by(certificates.c.serial)
            ).all()
    found: list[Target] = []
    for r in rows:
        device = device_id_of(r.subject)
        if device is not None and device in wanted:
            found.append(Target(r.serial, r.kind, r.status, r.subject, device))
    return found


def certificates_by_serials(conn: Connection, serials: Iterable[str]) -> list[Target]:
    """The certificates among ``serials`` (normalised hex) that this CA issued."""
    found: list[Target] = []
    ids = sorted(set(serials))
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(certificates.c.serial, certificates.c.kind, certificates.c.status, certificates.c.subject)
            .where(certificates.c.serial.in_(ids[start : start + 500]))
            .order_by(certificates.c.serial)
        ).all()
        found += [Target(r.serial, r.kind, r.status, r.subject, r.serial) for r in rows]
    return found
