"""CPU microseconds per certificate by stage, for ``make bench`` (issue 15).

The daemon's workers count their event-loop thread's CPU per stage when started with
``CKMS_STAGE_CLOCK_DIR`` (:mod:`ckms_app.cpu_stages`) and write their totals on ``SIGUSR1``. This module
takes such a snapshot of every worker before and after a phase, adds what the workers cannot count
themselves (the lint helpers' processes, read from ``/proc``), and divides the differences by the
certificates issued in between:

- ``tls_http``: the event-loop thread's CPU outside the marked stages (TLS records, HTTP parsing and
  writing, the event loop, authentication);
- ``authorise``, ``csr``, ``build``, ``hsm``, ``response``: marked on the event-loop thread;
- ``lint``: the throwaway signature and the lint round trip on the loop, plus the helper process;
- ``commit_audit``: building the row and the audit record on the loop, plus the group-commit thread;
- ``other_threads``: any other thread of the worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
ORDER = ("tls_http", "authorise", "csr", "build", "lint", "hsm", "commit_audit", "response", "other_threads")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_cpu_ns(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_NS


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


class StageProbe:
    """Snapshots of one daemon's workers (the children of its supervisor)."""

    def __init__(self, supervisor_pid: int, directory: Path) -> None:
        self.supervisor_pid = supervisor_pid
        self.directory = directory

    def snapshot(self, timeout: float = 5.0) -> dict[int, dict[str, Any]]:
        """Ask every worker for its totals and read them back; add the lint helpers' CPU."""
        workers = [pid for pid in children(self.supervisor_pid) if _comm(pid) != "ckms-lint"]
        asked = time.time()
        for pid in workers:
            os.kill(pid, signal.SIGUSR1)
        result: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        for pid in workers:
            path = self.directory / f"{pid}.json"
            while not (path.exists() and path.stat().st_mtime >= asked - 0.01):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {pid} wrote no stage snapshot to {self.directory}")
                time.sleep(0.01)
            doc: dict[str, Any] = json.loads(path.read_text())
            doc["process_ns"] = process_cpu_ns(pid)
            doc["lint_helper_ns"] = sum(process_cpu_ns(c) for c in children(pid) if _comm(c) == "ckms-lint")
            result[pid] = doc
        return result


def per_certificate(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], certificates: int | None = None
) -> dict[str, Any]:
    """µs of CPU per certificate by stage between two snapshots of the same workers."""
    totals = dict.fromkeys(ORDER, 0)
    issued = commits = units = 0
    for pid, end in after.items():
        start = before.get(pid)
        if start is None:
            continue  # a worker replaced during the phase: its counts start at zero and are left out
        issued += end["issued"] - start["issued"]
        counters, started = end.get("counters", {}), start.get("counters", {})
        commits += counters.get("commits", 0) - started.get("commits", 0)
        units += counters.get("units", 0) - started.get("units", 0)
        marked = 0
        for stage, ns in end["stages_ns"].items():
            delta = ns - start["stages_ns"].get(stage, 0)
            totals[stage] += delta
            marked += delta
        loop = end["loop_thread_ns"] - start["loop_thread_ns"]
        totals["tls_http"] += loop - marked
        commit = end["threads_ns"].get("commit_audit", 0) - start["threads_ns"].get("commit_audit", 0)
        totals["commit_audit"] += commit
        totals["lint"] += end["lint_helper_ns"] - start["lint_helper_ns"]
        totals["other_threads"] += max(0, end["process_ns"] - start["process_ns"] - loop - commit)
    count = certificates if certificates is not None else issued
    per = {k: round(v / 1000 / count, 1) if count else float("nan") for k, v in totals.items()}
    return {
        "certificates": count,
        "us_per_certificate": per,
        "total_us": round(sum(per.values()), 1),
        "commits": commits,
        "units_per_commit": round(units / commits, 1) if commits else float("nan"),
    }


def format_stages(figures: dict[str, Any]) -> str:
    per = figures["us_per_certificate"]
    parts = ", ".join(f"{k} {per[k]:g}" for k in ORDER)
    return (
        f"CPU µs per certificate: {parts} (daemon total {figures['total_us']:g}); "
        f"{figures['units_per_commit']:g} units per durable commit"
    )
