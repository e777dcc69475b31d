"""The daemon's error state and the gate in front of every signature (E.36, A.33).

Error state: after a failed self-test or an HSM failure at run time the CA answers every request
with 503 and a reason and signs nothing, until an administrator fixes the cause and runs
``ckms ca recover`` (or ``POST /api/v1/admin/recover``), which re-runs the self-tests first.

The state is a file in the CA home (``state/error-state.json``) so that it holds for every worker
process and survives a restart: a daemon restarted in the error state stays in it. Each worker
keeps an in-memory copy (the hot path reads a Python attribute) and polls the file twice a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ckms_app.audit.record import SYSTEM, record
from ckms_app.authority.clock import ClockGate
from ckms_app.config import Config
from ckms_app.errors import ErrorStateActive, HsmError
from ckms_app.store.writer import GroupCommitWriter

STATE_FILE = Path("state") / "error-state.json"
POLL_SECONDS = 0.5


class ServiceState:
    def __init__(self, home: Path) -> None:
        self.path = home / STATE_FILE
        self.reason: str | None = None
        self.since: str | None = None
        self.refresh()

    @property
    def in_error(self) -> bool:
        return self.reason is not None

    def refresh(self) -> bool:
        """Re-read the shared file; returns True if the state changed."""
        before = self.reason
        try:
            raw = json.loads(self.path.read_text())
            self.reason, self.since = str(raw.get("reason", "error state")), raw.get("since")
        except FileNotFoundError:
            self.reason, self.since = None, None
        except (ValueError, OSError):
            self.reason, self.since = "error-state file unreadable", None
        return before != self.reason

    def enter(self, reason: str, source: str) -> None:
        """Enter the error state for every worker (first reason wins until recovery)."""
        self.refresh()
        if self.reason is not None:
            return
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".error-state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reason": reason, "source": source, "since": since}) + "\n")
        tmp.replace(self.path)
        self.reason, self.since = reason, since

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.reason, self.since = None, None

    def as_dict(self) -> dict[str, Any]:
        return {"error_state": self.in_error, "reason": self.reason, "since": self.since}


AuditFn = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class SigningGuard:
    """What the issuer and the CRL publisher ask before every signature, and tell after an HSM failure."""

    def __init__(self, state: ServiceState, clock: ClockGate, audit: AuditFn | None = None) -> None:
        self.state = state
        self.clock = clock
        self._audit = audit

    async def check(self) -> None:
        if self.state.reason is not None:
            raise ErrorStateActive(f"the CA is in the error state: {self.state.reason}")
        await self.clock.require()

    async def hsm_failed(self, exc: HsmError) -> None:
        reason = f"HSM unavailable: {exc}"
        self.state.enter(reason, source="hsm")
        if self._audit is not None:
            await self._audit("daemon.error_state", "error", {"reason": reason, "source": "hsm"})


def make_guard(config: Config, writer: GroupCommitWriter | None) -> SigningGuard:
    """The guard of one process: the CA home's shared error state and its clock gate. With a writer,
    entering the error state after an HSM failure is also recorded on the audit trail."""
    audit: AuditFn | None = None
    if writer is not None:

        async def audit(action: str, outcome: str, detail: dict[str, Any]) -> None:
            await record(writer, SYSTEM, action, "daemon", outcome, detail)

    return SigningGuard(ServiceState(config.home), ClockGate(config.clock), audit)


async def poll_state(
    state: ServiceState, stop: asyncio.Event, on_change: Callable[[bool], Awaitable[None]] | None = None
) -> None:
    """Follow the shared error-state file until ``stop``; ``on_change(in_error)`` on each change."""
    while not stop.is_set():
        if state.refresh() and on_change is not None:
            await on_change(state.in_error)
        try:
            await asyncio.wait_for(stop.wait(), POLL_SECONDS)
        except TimeoutError:
            pass
