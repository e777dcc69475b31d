"""Clock gate: refuse to sign while the clock is not synchronised (A.33–A.35).

Certificates and CRLs carry times that relying parties trust, so the CA signs only while the
time daemon says the system clock is synchronised and within ``max_offset_seconds`` of its
reference. The reading comes from ``chronyc -c tracking`` (CSV: field 5 is the current system
time offset in seconds, the last field the leap status, "Not synchronised" when chrony has no
source). A reading is cached for ``cache_seconds`` so the issuance hot path pays for at most one
``chronyc`` call per second per worker; concurrent requests share one in-flight reading.

``source = "none"`` disables the gate. ``ckms ca init`` chooses ``chrony`` when ``chronyc`` is on
PATH and ``none`` otherwise, and says so in its summary; production hosts run chrony (role ntp).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import dataclass

from ckms_app.config import ClockConfig
from ckms_app.errors import ClockUnsynchronised

_TIMEOUT = 2.0


@dataclass(frozen=True)
class ClockReading:
    synchronised: bool
    offset_seconds: float | None
    reason: str  # for people: why not synchronised, or a short "ok" line

    def as_dict(self) -> dict[str, object]:
        return {
            "synchronised": self.synchronised,
            "offset_seconds": self.offset_seconds,
            "reason": self.reason,
        }


def default_source() -> str:
    """What ``ca init`` writes: chrony if its client is installed, else an explicit ``none``."""
    return "chrony" if shutil.which("chronyc") else "none"


def parse_tracking(csv_line: str, max_offset: float) -> ClockReading:
    """Interpret one line of ``chronyc -c tracking``."""
    fields = csv_line.strip().split(",")
    if len(fields) < 14:
        return ClockReading(False, None, f"unexpected chronyc output: {csv_line.strip()[:120]!r}")
    leap = fields[-1].strip()
    try:
        offset = float(fields[4])
    except ValueError:
        return ClockReading(False, None, f"unreadable offset in chronyc output: {fields[4]!r}")
    if leap.lower() == "not synchronised":
        return ClockReading(False, offset, "chrony reports the clock is not synchronised")
    if abs(offset) > max_offset:
        return ClockReading(
            False, offset, f"clock offset {offset:+.3f} s exceeds the bound of {max_offset:g} s"
        )
    return ClockReading(True, offset, f"synchronised (offset {offset:+.6f} s, leap status {leap})")


def _no_chronyc(exc: BaseException) -> ClockReading:
    return ClockReading(False, None, f"cannot query chrony: {type(exc).__name__}: {exc}")


class ClockGate:
    """One per process. :meth:`require` raises :class:`ClockUnsynchronised` when signing must wait."""

    def __init__(self, config: ClockConfig) -> None:
        self.config = config
        self._reading: ClockReading | None = None
        self._read_at = float("-inf")
        self._lock: asyncio.Lock | None = None

    @property
    def enabled(self) -> bool:
        return self.config.source != "none"

    def _fresh(self) -> ClockReading | None:
        if self._reading is not None and time.monotonic() - self._read_at < self.config.cache_seconds:
            return self._reading
        return None

    def _store(self, reading: ClockReading) -> ClockReading:
        self._reading, self._read_at = reading, time.monotonic()
        return reading

    def read(self) -> ClockReading:
        """Synchronous reading, for the CLI and health."""
        if not self.enabled:
            return ClockReading(True, None, "clock gate disabled ([clock] source = none)")
        cached = self._fresh()
        if cached is not None:
            return cached
        try:
            out = subprocess.run(
                [self.config.chronyc, "-c", "tracking"], capture_output=True, text=True, timeout=_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._store(_no_chronyc(exc))
        return self._store(self._interpret(out.returncode, out.stdout, out.stderr))

    async def aread(self) -> ClockReading:
        """Non-blocking reading for the daemon: cached, single flight."""
        if not self.enabled:
            return ClockReading(True, None, "clock gate disabled ([clock] source = none)")
        cached = self._fresh()
        if cached is not None:
            return cached
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.config.chronyc,
                    "-c",
                    "tracking",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    stdin=asyncio.subprocess.DEVNULL,
                )
                out, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT)
            except (OSError, TimeoutError) as exc:
                return self._store(_no_chronyc(exc))
            return self._store(
                self._interpret(
                    proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
                )
            )

    def _interpret(self, returncode: int, stdout: str, stderr: str) -> ClockReading:
        if returncode != 0:
            return ClockReading(False, None, f"chronyc failed ({returncode}): {stderr.strip()[:200]}")
        return parse_tracking(stdout, self.config.max_offset_seconds)

    async def require(self) -> ClockReading:
        reading = await self.aread()
        if not reading.synchronised:
            raise ClockUnsynchronised(
                f"signing refused: {reading.reason}; retry when the clock is synchronised"
            )
        return reading

    def require_sync(self) -> ClockReading:
        reading = self.read()
        if not reading.synchronised:
            raise ClockUnsynchronised(
                f"signing refused: {reading.reason}; retry when the clock is synchronised"
            )
        return reading
