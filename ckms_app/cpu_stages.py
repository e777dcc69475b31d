"""Where a worker's CPU goes per certificate, stage by stage (``make bench``; A.41, A.42).

Why: the issuance path has no single hot spot (TLS and HTTP, CSR checks, the builder, the lint
round trip, the HSM, the commit and its audit record), so a regression only shows when each stage's
CPU is counted. A :class:`StageClock` adds the event-loop thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``)
between marks to the stage that ran; what the thread spent outside the marked stages is the TLS, HTTP
and event-loop share. Threads and processes of their own are read whole: the group-commit thread (commit
and audit) and the lint helper (lint).

Off unless the daemon is started with ``CKMS_STAGE_CLOCK_DIR`` (the benchmark does): then every mark
costs one clock read, and ``SIGUSR1`` makes each worker write its totals to
``$CKMS_STAGE_CLOCK_DIR/<pid>.json``. A disabled clock's marks are no-ops, so the hot path carries the
calls either way and reads the same.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "CKMS_STAGE_CLOCK_DIR"

#: Stages marked on the event-loop thread, in the order one issuance passes them.
STAGES = ("authorise", "csr", "build", "lint", "hsm", "commit_audit", "response")


class StageClock:
    """CPU nanoseconds per stage on one worker's event-loop thread, and the issuances counted."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.enabled = directory is not None
        self.ns = dict.fromkeys(STAGES, 0)
        self.issued = 0
        self._other_threads: dict[str, int] = {}  # name -> thread id, read with pthread_getcpuclockid
        self._counters: dict[str, Callable[[], int]] = {}  # e.g. the writer's commits and units

    @classmethod
    def from_environment(cls) -> StageClock:
        raw = os.environ.get(ENV)
        return cls(Path(raw)) if raw else cls()

    def mark(self) -> int:
        """The thread's CPU clock now (0 when disabled)."""
        return time.thread_time_ns() if self.enabled else 0

    def charge(self, stage: str, since: int) -> int:
        """Add the CPU since ``since`` to ``stage``; the new mark."""
        if not self.enabled:
            return 0
        now = time.thread_time_ns()
        self.ns[stage] += now - since
        return now

    def count_issued(self) -> None:
        self.issued += 1

    def watch_thread(self, name: str, thread: threading.Thread) -> None:
        """Report a helper thread's whole CPU time under ``name`` (e.g. the group-commit thread)."""
        if self.enabled and thread.ident is not None:
            self._other_threads[name] = thread.ident

    def watch_counter(self, name: str, read: Callable[[], int]) -> None:
        """Report a running count (e.g. commits) with each snapshot."""
        if self.enabled:
            self._counters[name] = read

    def snapshot(self) -> dict[str, object]:
        """Totals so far; called on the event-loop thread, so its own clock is the loop's."""
        threads: dict[str, int] = {}
        for name, ident in self._other_threads.items():
            try:
                threads[name] = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
            except OSError:  # the thread has ended
                continue
        return {
            "pid": os.getpid(),
            "issued": self.issued,
            "loop_thread_ns": time.thread_time_ns(),
            "stages_ns": dict(self.ns),
            "threads_ns": threads,
            "counters": {name: read() for name, read in self._counters.items()},
        }

    def write_snapshot(self) -> None:
        """Write :meth:`snapshot` atomically to ``<directory>/<pid>.json`` (the SIGUSR1 handler)."""
        if self.directory is None:
            return
        target = self.directory / f"{os.getpid()}.json"
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(self.snapshot()))
        partial.replace(target)
