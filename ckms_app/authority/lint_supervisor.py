"""The daemon's linter: one :class:`~ckms_app.authority.linter.AsyncLinter` helper at a time, restarted.

Why: a worker whose helper was stopped after one timeout (or crashed) could never issue again; the
worker must heal itself without ever signing unlinted. The supervisor waits for its helper to die or be
stopped, then starts a new one after a delay that doubles while helpers keep dying quickly (0.5 s up to
30 s, reset after a helper served a minute), so a helper that crashes on every start costs one spawn
every 30 s, not a busy loop. Meanwhile every lint call raises :class:`LintUnavailable` at once: the
request gets 503 with Retry-After, and nothing waits on a restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ckms_app.authority.linter import DEFAULT_TIMEOUT, AsyncLinter, LintReport, find_linter_binary
from ckms_app.errors import LintUnavailable

log = logging.getLogger("ckms.linter")

#: Restart delays: the first after a death, doubling per death up to the cap; reset after a helper
#: has served STABLE_SECONDS. A helper that dies on every start costs one spawn per 30 s, not a loop.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_SECONDS = 60.0


class SupervisedLinter:
    """One :class:`AsyncLinter` helper at a time, replaced when it dies or hangs.

    The dead helper's callers get :class:`LintUnavailable` (503, nothing signed), later callers get it
    at once while no helper runs. The first start is not retried: a missing binary or a bad source list
    is a configuration error the daemon must not start with.
    """

    def __init__(
        self,
        binary: Path,
        sources: list[str] | None,
        timeout: float,
        *,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        stable_seconds: float = STABLE_SECONDS,
    ) -> None:
        self._binary = binary
        self._sources = sources
        self._timeout = timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._stable_seconds = stable_seconds
        self._current: AsyncLinter | None = None
        self._closing = False
        self._why_down = "linter not started"
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0  # helpers started after the first

    @classmethod
    async def start(
        cls,
        binary: Path | None = None,
        sources: list[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        stable_seconds: float = STABLE_SECONDS,
    ) -> SupervisedLinter:
        path = find_linter_binary(binary)
        self = cls(
            path,
            sources,
            timeout,
            first_backoff=first_backoff,
            max_backoff=max_backoff,
            stable_seconds=stable_seconds,
        )
        self._current = await AsyncLinter.start(path, sources, timeout=timeout)
        self._task = asyncio.create_task(self._supervise())
        return self

    @property
    def alive(self) -> bool:
        return self._current is not None and self._current.alive

    @property
    def pid(self) -> int | None:
        """The running helper's process ID (None while it is being replaced)."""
        return self._current.pid if self.alive and self._current is not None else None

    async def lint_certificate(self, der: bytes) -> LintReport:
        return await self._helper().lint_certificate(der)

    async def lint_crl(self, der: bytes) -> LintReport:
        return await self._helper().lint_crl(der)

    def _helper(self) -> AsyncLinter:
        helper = self._current
        if self._closing:
            raise LintUnavailable("linter closed")
        if helper is None or not helper.alive:
            raise LintUnavailable(
                f"the pre-issuance linter is being restarted ({self._why_down}); nothing is signed "
                "until it answers: retry shortly"
            )
        return helper

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._first_backoff
        while not self._closing:
            helper = self._current
            if helper is not None:
                started = loop.time()
                await helper.wait_gone()
                if self._stopping():
                    return
                self._why_down = helper.reason or "helper gone"
                self._current = None
                await helper.close()  # reap the process
                if loop.time() - started >= self._stable_seconds:
                    backoff = self._first_backoff
                log.error(
                    "lint helper %d down (%s); restarting in %.1f s", helper.pid, self._why_down, backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
            try:
                fresh = await AsyncLinter.start(self._binary, self._sources, timeout=self._timeout)
            except LintUnavailable as exc:
                self._why_down = str(exc)
                log.error("lint helper restart failed (%s); next try in %.1f s", exc, backoff)
                continue
            if self._stopping():
                await fresh.close()
                return
            self._current = fresh
            self.restarts += 1
            log.warning("lint helper restarted (pid %d, restart %d)", fresh.pid, self.restarts)

    def _stopping(self) -> bool:
        """Whether close() has begun (a method, so the checks after each await are not narrowed away)."""
        return self._closing

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._current is not None:
            await self._current.close()

    async def __aenter__(self) -> SupervisedLinter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
