"""Pre-issuance linting: the Python side of the zlint helper ``ckms-lint``.

Why: every certificate and CRL the CA signs is first linted against RFC 5280 (Boulder's design: the CA
signs a copy with a throwaway key, lints it, and asks the HSM to sign the real one only when there is
no error/fatal finding). zlint is fast but written in Go, and a process per certificate would cost more
than the lint, so one long-lived helper (``tools/ckms-lint``, built by ``scripts/build-ckms-lint.sh``)
answers framed requests over its stdin/stdout:

    request  = kind (1 byte: b"C" certificate, b"R" CRL, b"P" ping) + 4-byte big-endian length + DER
    response = 4-byte big-endian length + JSON {"ok", "findings": [...], "parse_error"}

Responses come back in request order, so many requests can be in flight on one pipe (the helper lints
them on several cores) and each is matched to its caller first-in, first-out.

If the helper dies or stops answering, every pending and later call raises :class:`LintUnavailable`
instead of hanging: issuing without the lint is never an option. :class:`AsyncLinter` is one helper
process (a CLI command's signer uses one for its duration); the daemon's workers use
:class:`~ckms_app.authority.lint_supervisor.SupervisedLinter`, which replaces a helper that died or hung, with back-off, and answers
:class:`LintUnavailable` (HTTP 503) at once while none is running.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ckms_app.errors import LintUnavailable

__all__ = [
    "AsyncLinter",
    "LintFinding",
    "LintReport",
    "LintUnavailable",
    "Linter",
    "find_linter_binary",
]

BUILD_HINT = "build it with scripts/build-ckms-lint.sh (or `make tools`)"
#: A lint that takes this long means the helper is wedged; failing beats blocking issuance forever.
DEFAULT_TIMEOUT = 30.0
BLOCKING_STATUSES = frozenset({"error", "fatal"})
_LEN = struct.Struct(">I")
_MAX_RESPONSE = 64 << 20
# The helper's answer for a certificate or CRL without findings, as Go's encoding/json writes it: the
# common case is recognised by its bytes instead of being parsed (a third of the client's time per lint)
_CLEAN = b'{"ok":true,"findings":[],"parse_error":null}'
_CLEAN_DOC: dict[str, Any] = {"ok": True, "findings": [], "parse_error": None}


@dataclass(frozen=True)
class LintFinding:
    """One zlint result that is not pass/NA/NE; ``status`` is error, fatal, warn or notice."""

    lint: str
    status: str
    details: str
    source: str


@dataclass(frozen=True)
class LintReport:
    """What the linter said about one certificate or CRL."""

    findings: tuple[LintFinding, ...]
    parse_error: str | None

    @property
    def blocking(self) -> tuple[LintFinding, ...]:
        """Findings that forbid signing. A DER the linter cannot even parse is blocking too, reported
        as a synthetic fatal finding so callers need only look at one list."""
        found = tuple(f for f in self.findings if f.status in BLOCKING_STATUSES)
        if self.parse_error is not None:
            found = (LintFinding("ckms_lint_parse_error", "fatal", self.parse_error, "ckms-lint"), *found)
        return found

    @property
    def ok(self) -> bool:
        return not self.blocking

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LintReport:
        findings = tuple(
            LintFinding(str(f["lint"]), str(f["status"]), str(f.get("details", "")), str(f.get("source", "")))
            for f in doc.get("findings") or ()
        )
        parse_error = doc.get("parse_error")
        return cls(findings, None if parse_error is None else str(parse_error))


_CLEAN_REPORT = LintReport((), None)


def _report(doc: dict[str, Any]) -> LintReport:
    return _CLEAN_REPORT if doc is _CLEAN_DOC else LintReport.from_json(doc)


def find_linter_binary(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate ``ckms-lint``: explicit path, ``$CKMS_LINT_BIN``, ``$CKMS_TOOL_CACHE/bin``, ``~/.cache/ckms/bin``.

    A path that was asked for explicitly (argument or ``CKMS_LINT_BIN``) must exist: silently falling
    back to another build would lint with rules the operator did not choose.
    """
    chosen = explicit if explicit is not None else os.environ.get("CKMS_LINT_BIN") or None
    if chosen is not None:
        candidates = [Path(chosen)]
    else:
        candidates = []
        if os.environ.get("CKMS_TOOL_CACHE"):
            candidates.append(Path(os.environ["CKMS_TOOL_CACHE"]) / "bin" / "ckms-lint")
        candidates.append(Path.home() / ".cache" / "ckms" / "bin" / "ckms-lint")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise LintUnavailable(f"linter binary ckms-lint not found (tried {tried}); {BUILD_HINT}")


def _command(binary: Path, sources: Sequence[str] | None) -> list[str]:
    cmd = [str(binary)]
    if sources:
        cmd += ["-sources", ",".join(sources)]
    return cmd


def _frame(kind: bytes, der: bytes) -> bytes:
    return kind + _LEN.pack(len(der)) + der


def _died(binary: Path, why: str, stderr_tail: Sequence[str]) -> str:
    tail = " | ".join(line for line in stderr_tail if line)
    return (
        f"linter {binary} {why}"
        + (f": {tail}" if tail else "")
        + f"; if it is missing or stale, {BUILD_HINT}"
    )


class AsyncLinter:
    """The linter client (the daemon, and the signer of every CLI command that signs): any number of
    concurrent awaits share one pipelined helper.

    Each request appends a future to a FIFO and its frame to an outbox without awaiting in between, so
    the queue order is the wire order; the outbox goes to the pipe once per turn of the event loop (the
    requests of concurrent issuances share one write), and one reader task resolves the futures as
    responses arrive. One watchdog timer, not a timeout task per request, holds the helper to
    ``timeout``: if the oldest unanswered request is older, the helper is stopped and every waiting
    caller gets :class:`LintUnavailable`.
    """

    def __init__(self, proc: asyncio.subprocess.Process, binary: Path, timeout: float) -> None:
        self._proc = proc
        self._binary = binary
        self._timeout = timeout
        # (answer, deadline) per request in wire order; the deadline is the event loop's clock
        self._pending: collections.deque[tuple[asyncio.Future[dict[str, Any]], float]] = collections.deque()
        self._outbox = bytearray()  # frames written in this turn of the event loop, sent together
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._dead: str | None = None
        self._closing = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._gone = asyncio.Event()  # set once the helper is dead or closed (what a supervisor waits for)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._reader = asyncio.create_task(self._read_loop())
        self.info: dict[str, Any] = {}

    @classmethod
    async def start(
        cls,
        binary: Path | None = None,
        sources: list[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AsyncLinter:
        """Spawn a helper and ping it (so a bad ``sources`` list fails here). Costs a few ms: the
        daemon may simply call it again after :class:`LintUnavailable`."""
        path = find_linter_binary(binary)
        try:
            proc = await asyncio.create_subprocess_exec(
                *_command(path, sources),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise LintUnavailable(f"cannot start linter {path}: {exc}; {BUILD_HINT}") from exc
        self = cls(proc, path, timeout)
        try:
            self.info = dict((await self._request(b"P", b"")).get("info") or {})
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self._dead is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def reason(self) -> str | None:
        """Why the helper is gone (None while it is alive)."""
        return self._dead

    async def wait_gone(self) -> None:
        """Return once the helper has died, hung past its deadline or been closed."""
        await self._gone.wait()

    async def lint_certificate(self, der: bytes) -> LintReport:
        return _report(await self._request(b"C", der))

    async def lint_crl(self, der: bytes) -> LintReport:
        return _report(await self._request(b"R", der))

    async def _request(self, kind: bytes, der: bytes) -> dict[str, Any]:
        if self._dead is not None or self._closing:
            raise LintUnavailable(self._dead or "linter closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._pending.append((fut, deadline))
        self._outbox += _frame(kind, der)  # no await since append: FIFO order == wire order
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
        return await fut

    def _flush(self) -> None:
        """Send the outbox. A helper that stopped reading leaves it in the pipe's buffer until the
        watchdog stops the helper."""
        self._flush_handle = None
        stdin = self._proc.stdin
        if self._outbox and self._dead is None and stdin is not None and not stdin.is_closing():
            stdin.write(bytes(self._outbox))
        self._outbox.clear()

    def _check_deadline(self) -> None:
        """The watchdog: the oldest unanswered request is within its deadline, or the helper is wedged.
        One lost answer would shift every later one onto the wrong caller, so the helper is ended."""
        self._watchdog = None
        if self._dead is not None or not self._pending:
            return
        loop = asyncio.get_running_loop()
        oldest = self._pending[0][1]
        if oldest <= loop.time():
            self._fail(f"linter {self._binary} gave no answer within {self._timeout:g}s and was stopped")
            return
        self._watchdog = loop.call_at(oldest, self._check_deadline)

    async def _read_loop(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        why = "exited"
        try:
            while True:
                (size,) = _LEN.unpack(await stdout.readexactly(4))
                if size > _MAX_RESPONSE:
                    raise ValueError(f"response of {size} bytes")
                body = await stdout.readexactly(size)
                doc = _CLEAN_DOC if body == _CLEAN else json.loads(body)
                fut, _ = self._pending.popleft()  # IndexError: an answer nobody asked for
                if not fut.done():  # the caller may have been cancelled; the order still holds
                    fut.set_result(doc)
        except asyncio.IncompleteReadError:
            # Give the exit status and last stderr line a moment to arrive: they explain the death.
            try:
                await asyncio.wait_for(asyncio.gather(self._proc.wait(), self._stderr_task), 0.5)
            except (TimeoutError, asyncio.CancelledError):
                pass
            if self._proc.returncode is not None:
                why = f"exited with status {self._proc.returncode}"
        except asyncio.CancelledError:
            why = "was closed"
        except Exception as exc:  # malformed response: the stream cannot be trusted any more
            why = f"broke the protocol ({exc!r})"
        self._fail("linter closed" if self._closing else _died(self._binary, why, self._stderr))

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        async for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace").strip())

    def _fail(self, message: str) -> None:
        """Mark the helper dead, fail every waiting caller and make sure the process is gone."""
        if self._dead is None:
            self._dead = message
        self._gone.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outbox.clear()
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(LintUnavailable(self._dead))
        if self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass

    async def close(self) -> None:
        """Stop the helper. Requests already written are still answered (EOF on stdin lets it drain)."""
        self._closing = True
        self._flush()  # what was asked before close is still answered
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except (TimeoutError, asyncio.CancelledError):
            self._reader.cancel()
        self._fail("linter closed")
        await self._proc.wait()
        self._stderr_task.cancel()

    async def __aenter__(self) -> AsyncLinter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Linter(Protocol):
    """What the signer needs of a linter: one helper (:class:`AsyncLinter`) or a supervised one."""

    @property
    def alive(self) -> bool: ...

    async def lint_certificate(self, der: bytes) -> LintReport: ...

    async def lint_crl(self, der: bytes) -> LintReport: ...

    async def close(self) -> None: ...
