"""Refused requests on the trail without letting anyone on the LAN grow it at will (A.06, A.31, F.12).

A request refused at the door (no client certificate, a certificate of no registered entity, a refused
credential) used to write one durable record each, with the whole request path: an outsider could grow
the trail as fast as they could send requests. Now each worker keeps a :class:`RefusalSummary`:

* the first ``individual`` refusals of an interval still get their own ``auth.deny`` record (who, route,
  reason, peer), so an outsider's first attempt is on the trail at once, as A.31 asks;
* every other refusal, including the transport's (a connection cap, a header/body timeout), is counted
  by (method, route, reason, source), and once per interval one ``auth.deny.summary`` record lists the
  counts: at most ``max_entries`` keys (the most frequent; the rest are added up in ``other``), with
  the route's template rather than the path sent, and the source's address without its port.

So a worker writes at most ``individual + 1`` records per interval however many requests arrive, and no
record grows with what a client sends. Nothing is lost: every refusal is either an ``auth.deny`` record
or counted in exactly one summary (``suppressed``: its entries plus ``other``), and the summary is
flushed when the worker stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ckms_app.audit.record import Actor, named, record
from ckms_app.store.writer import GroupCommitWriter

log = logging.getLogger("ckms.audit.refusals")

SUMMARY_ACTION = "auth.deny.summary"
UNAUTHENTICATED = named("unauthenticated", "none")
_FIELD_MAX = 80  # characters kept of a method, route, reason or source


def _clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= _FIELD_MAX else text[: _FIELD_MAX - 1] + "…"


def source_of(remote: object) -> str:
    """The peer's address without a port (aiohttp's ``request.remote`` is already that, or None)."""
    return _clip(remote or "unknown")


class RefusalSummary:
    """Rate-limited, bounded accounting of refused requests for one worker."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        *,
        interval: float = 60.0,
        max_entries: int = 50,
        individual: int = 20,
        worker: int = 0,
    ) -> None:
        self.writer = writer
        self.interval = interval
        self.max_entries = max_entries
        self.individual = individual
        self.worker = worker
        self.summaries_written = 0
        self._reset()

    def _reset(self) -> None:
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._other = 0  # refusals whose key did not fit in max_entries
        self._recorded = 0  # refusals recorded one by one this interval
        self._total = 0  # refusals counted (not recorded one by one) this interval
        self._since = dt.datetime.now(dt.UTC)

    def count(self, method: str, route: str, reason: str, source: str) -> None:
        """Count one refusal for the interval's summary (never writes)."""
        key = (_clip(method), _clip(route), _clip(reason), _clip(source))
        self._total += 1
        if key in self._counts or len(self._counts) < self.max_entries:
            self._counts[key] += 1
        else:
            self._other += 1

    async def refuse(
        self,
        who: Actor,
        *,
        method: str,
        route: str,
        reason: str,
        source: str,
        detail: Mapping[str, Any],
    ) -> bool:
        """Record a refused request individually while this interval's allowance lasts, else count it.

        Returns whether an individual ``auth.deny`` record was written.
        """
        if self._recorded >= self.individual:
            self.count(method, route, reason, source)
            return False
        self._recorded += 1
        await record(self.writer, who, "auth.deny", _clip(route), "denied", detail)
        return True

    def pending(self) -> int:
        """Refusals counted this interval (none of them has a record of its own)."""
        return self._total

    async def flush(self) -> bool:
        """Write the interval's summary if any refusal went unrecorded; start a new interval."""
        if self.pending() <= 0:
            self._reset()
            return False
        now = dt.datetime.now(dt.UTC)
        entries = [
            {"method": m, "route": r, "reason": why, "source": s, "count": n}
            for (m, r, why, s), n in self._counts.most_common(self.max_entries)
        ]
        detail = {
            "worker": self.worker,
            "from": self._since.isoformat(timespec="seconds"),
            "to": now.isoformat(timespec="seconds"),
            "recorded": self._recorded,  # refusals of the interval with their own auth.deny record
            "suppressed": self._total,  # refusals counted here only: the entries' counts plus other
            "entries": entries,
            "other": self._other,
        }
        self._reset()
        await record(self.writer, UNAUTHENTICATED, SUMMARY_ACTION, "daemon", "denied", detail)
        self.summaries_written += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Flush once per interval until ``stop``; then a last time."""
        next_at = time.monotonic() + self.interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                pass
            next_at = time.monotonic() + self.interval
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - counting must not stop the worker; retried next interval
                log.exception("refusal summary not written")
