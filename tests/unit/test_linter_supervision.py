"""The daemon's supervised linter (issue 11 item 8): a helper that dies or hangs is replaced, with back-off,
and while none runs every call is refused at once (the daemon answers 503 and signs nothing).

Real ckms-lint helpers, killed and stopped with real signals; delays are shortened for the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from ckms_app.authority.lint_supervisor import SupervisedLinter
from ckms_app.authority.linter import LintUnavailable

from .test_linter import good_leaf

FAST = {"first_backoff": 0.2, "max_backoff": 1.0, "stable_seconds": 5.0}


async def _answering(lt: SupervisedLinter, der: bytes, within: float = 10.0) -> float:
    """Seconds until the supervised linter answers again."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            assert (await lt.lint_certificate(der)).ok
            return time.monotonic() - t0
        except LintUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no helper answered within {within} s")


@pytest.fixture
def der() -> bytes:
    return good_leaf()


def test_killed_helper_is_replaced_and_refuses_quickly_meanwhile(
    lint_bin: Path,
    runner: asyncio.Runner,
    der: bytes,
) -> None:
    async def body() -> None:
        async with await SupervisedLinter.start(lint_bin, **FAST) as lt:
            first = lt.pid
            assert first is not None and (await lt.lint_certificate(der)).ok
            os.kill(first, signal.SIGSTOP)
            pending = [asyncio.create_task(lt.lint_certificate(der)) for _ in range(10)]
            await asyncio.sleep(0.05)
            os.kill(first, signal.SIGKILL)  # dies under queued requests
            results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
            assert all(isinstance(r, LintUnavailable) for r in results), results
            t0 = time.monotonic()
            with pytest.raises(LintUnavailable, match="being restarted|exited|signal"):
                await lt.lint_certificate(der)  # no helper now: refused at once, not queued
            assert time.monotonic() - t0 < 0.5
            assert await _answering(lt, der) < 5
            assert lt.pid not in (None, first) and lt.restarts == 1 and lt.alive

    runner.run(body())


def test_hung_helper_times_out_and_is_replaced(lint_bin: Path, runner: asyncio.Runner, der: bytes) -> None:
    async def body() -> None:
        async with await SupervisedLinter.start(lint_bin, timeout=0.3, **FAST) as lt:
            first = lt.pid
            assert first is not None
            os.kill(first, signal.SIGSTOP)
            with pytest.raises(LintUnavailable, match="no answer"):
                await lt.lint_certificate(der)
            await _answering(lt, der)
            assert lt.pid != first and lt.restarts == 1

    runner.run(body())


def test_restarts_back_off_while_helpers_keep_dying(
    lint_bin: Path, runner: asyncio.Runner, der: bytes
) -> None:
    """Each quick death doubles the wait before the next start (up to the cap)."""

    async def body() -> None:
        async with await SupervisedLinter.start(lint_bin, **FAST) as lt:
            waits = []
            for _ in range(3):
                pid = lt.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                waits.append(await _answering(lt, der))
            assert waits[0] < waits[2] and waits[2] >= 0.75, waits  # 0.2, 0.4, 0.8 s
            assert lt.restarts == 3

    runner.run(body())


def test_close_stops_the_supervisor_and_refuses(lint_bin: Path, runner: asyncio.Runner, der: bytes) -> None:
    async def body() -> None:
        lt = await SupervisedLinter.start(lint_bin, **FAST)
        pid = lt.pid
        assert pid is not None
        await lt.close()
        with pytest.raises(LintUnavailable, match="closed"):
            await lt.lint_certificate(der)
        await asyncio.sleep(0.5)
        assert lt.restarts == 0 and not lt.alive
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    runner.run(body())
