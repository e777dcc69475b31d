"""The daemon's transport under hostile clients: TLS algorithms, timeouts and connection caps (A.62, A.64).

**TLS algorithms.** Only TLS 1.3, key exchange only on the configured groups (default P-256, P-384) and
only the configured AEAD suites (default AES-128-GCM, AES-256-GCM). Python's :mod:`ssl` cannot say this
on 3.11–3.13: ``set_ciphers`` governs TLS 1.2 and below only, ``set_ecdh_curve`` sets a single group, and
``set_groups``/TLS 1.3 suite setters do not exist before 3.15. :func:`restrict_tls13` therefore calls
OpenSSL's own ``SSL_CTX_set_ciphersuites`` and ``SSL_CTX_set1_groups_list`` (``SSL_CTX_ctrl`` with
``SSL_CTRL_SET_GROUPS_LIST``) through :mod:`ctypes` on the context's ``SSL_CTX``, in the very library
``_ssl`` is linked against. Chosen over an OpenSSL configuration file (``OPENSSL_CONF`` with a
``system_default`` section) because that one is process-wide and must be in the environment before
anything initialises OpenSSL: it would also narrow the daemon's outgoing TLS (alert webhooks) and
silently not apply to a daemon started by hand or by a test without the variable; the context-level call
applies exactly to the listener, is configured in ckms.toml, and fails closed: the pointer is
cross-checked against the context (its options word read both ways) before anything is written, a
refused list is a :class:`~ckms_app.errors.ConfigError` and the daemon does not start, and the suites
actually offered are read back. Tests and the report prove it with ``openssl s_client``.

**Slow and idle clients.** Each connection of either listener is wrapped in :class:`GuardedProtocol`
around aiohttp's request handler: a request's headers must be complete within ``header_timeout`` of the
connection (or of the request's first byte), its body within ``body_timeout`` of the headers, however
slowly it trickles in; an idle keep-alive connection is closed by aiohttp after ``keepalive_timeout``;
a TLS handshake gets ``header_timeout``. A connection over time is aborted at once (no lingering TLS
shutdown), which frees its descriptor. A handler waiting for such a body sees the connection lost
and :func:`quiet_disconnects` ends it without a traceback.

**Connection caps.** At most ``max_connections`` open connections per worker and listener, and at most
``max_connections_per_client`` per source address over all workers and both listeners (counted in an
anonymous shared memory table the supervisor creates before forking; addresses are hashed with a
per-start random key into buckets, so a collision can only make the cap stricter, and nobody can aim at
another client's bucket). A connection over a cap is closed as soon as it is accepted (after the TLS
handshake). Caps and timeouts are counted in the worker's refusal summary, never recorded one by one.
The systemd unit's ``LimitNOFILE`` is the hard ceiling underneath; the per-worker cap is lowered to fit
the process's descriptor limit.
"""

from __future__ import annotations

import _ssl
import asyncio
import ctypes
import hashlib
import logging
import mmap
import os
import resource
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseRunner, BaseSite

from ckms_app.audit.refusals import RefusalSummary
from ckms_app.config import ServerConfig
from ckms_app.errors import ConfigError

log = logging.getLogger("ckms.transport")

_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's ssl.h; SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


def _libssl() -> ctypes.CDLL:
    """The libssl that Python's ``_ssl`` uses (through its own handle, so never a second copy)."""
    path = getattr(_ssl, "__file__", None)
    lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)  # built-in _ssl: libssl is in the process
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The ``SSL_CTX *`` of a Python context: the first field after the object header of ``_ssl._SSLContext``,
    checked by reading the options word through OpenSSL and comparing with Python's view of it."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        raise ConfigError("cannot reach OpenSSL's SSL_CTX of the TLS context to restrict its algorithms")
    return pointer


def restrict_tls13(ctx: ssl.SSLContext, groups: tuple[str, ...], suites: tuple[str, ...]) -> None:
    """TLS 1.3 only, key exchange only on ``groups``, only the ``suites`` (see the module docstring)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    lib = _libssl()
    pointer = _ssl_ctx_pointer(ctx, lib)
    if lib.SSL_CTX_set_ciphersuites(pointer, ":".join(suites).encode()) != 1:
        raise ConfigError(f"[server] tls_ciphersuites: OpenSSL refused {':'.join(suites)}")
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode()) != 1:
        raise ConfigError(f"[server] tls_groups: OpenSSL refused {':'.join(groups)}")
    offered = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    if offered != set(suites):
        raise ConfigError(f"TLS 1.3 suites offered are {sorted(offered)}, not the configured {list(suites)}")


class ClientTable:
    """Open connections per source address, shared by all workers (anonymous shared memory, inherited
    over fork). Each worker writes only its own row; a reader adds the rows up. A replaced worker
    starts its row from zero (its connections died with it)."""

    def __init__(self, workers: int, buckets: int = 4096) -> None:
        self.workers = max(1, workers)
        self.buckets = buckets
        self._mem = mmap.mmap(-1, self.workers * buckets * 4)  # MAP_SHARED | MAP_ANONYMOUS
        self._cells = memoryview(self._mem).cast("i")
        self._key = os.urandom(16)
        self._row = 0

    def use_row(self, worker: int) -> None:
        """Called in a worker after fork: count into row ``worker``, starting from zero."""
        self._row = worker % self.workers
        start = self._row * self.buckets
        for i in range(start, start + self.buckets):
            self._cells[i] = 0

    def _bucket(self, source: str) -> int:
        digest = hashlib.blake2b(source.encode(), key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.buckets

    def open_count(self, source: str) -> int:
        b = self._bucket(source)
        return sum(self._cells[w * self.buckets + b] for w in range(self.workers))

    def acquire(self, source: str, cap: int) -> bool:
        b = self._bucket(source)
        if sum(self._cells[w * self.buckets + b] for w in range(self.workers)) >= cap:
            return False
        self._cells[self._row * self.buckets + b] += 1
        return True

    def release(self, source: str) -> None:
        i = self._row * self.buckets + self._bucket(source)
        if self._cells[i] > 0:
            self._cells[i] -= 1


def descriptor_budget(requested: int, listeners: int = 2, reserve: int = 128) -> int:
    """``requested`` connections per listener, lowered to what RLIMIT_NOFILE leaves after ``reserve``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    fits = max(1, (soft - reserve) // listeners)
    if fits < requested:
        log.warning("max_connections %d lowered to %d to fit the open-file limit %d", requested, fits, soft)
    return min(requested, fits)


class ConnectionGuard:
    """One listener's limits in one worker: caps at accept, deadlines per connection."""

    def __init__(
        self,
        name: str,
        server: ServerConfig,
        clients: ClientTable,
        refusals: RefusalSummary | None = None,
        *,
        max_connections: int | None = None,
    ) -> None:
        self.name = name
        self.header_timeout = server.header_timeout_seconds
        self.body_timeout = server.body_timeout_seconds
        self.max_connections = max_connections or server.max_connections
        self.per_client = server.max_connections_per_client
        self.clients = clients
        self.refusals = refusals
        self.open = 0
        self.stopping = False

    def stop_admitting(self) -> None:
        """The worker is stopping: a connection whose TLS handshake ends from now on is closed unserved.

        Why: the listening socket closes at once, but handshakes already under way finish later and
        would reach aiohttp after its shutdown has listed the connections it waits for, then run
        against a runtime that is being closed (a 503 instead of a clean close).
        """
        self.stopping = True

    def admit(self, source: str) -> str | None:
        """None if the connection may stay, else the reason it is closed."""
        if self.stopping:
            return "stopping"
        if self.open >= self.max_connections:
            return "connection_limit"
        if not self.clients.acquire(source, self.per_client):
            return "client_connection_limit"
        self.open += 1
        return None

    def release(self, source: str) -> None:
        self.open -= 1
        self.clients.release(source)

    def refused(self, reason: str, source: str) -> None:
        if self.refusals is not None:
            self.refusals.count("-", self.name, reason, source)


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler with a header and a body deadline and the connection caps.

    The phases: ``headers`` (deadline: the headers complete), ``body`` (deadline: the body complete),
    ``handling`` (no deadline here; aiohttp's keep-alive timeout closes the connection once idle). The
    handler's parsed-message queue tells when headers are complete; the message's payload stream tells
    when its body is.
    """

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner  # aiohttp.web_protocol.RequestHandler
        self._transport: asyncio.BaseTransport | None = None
        self._source = "unknown"
        self._admitted = False
        self._phase = "headers"
        self._payload: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if peer else "unknown"
        reason = self._guard.admit(self._source)
        if reason is not None:
            if reason != "stopping":  # a stop is not the client's doing: not a refusal
                self._guard.refused(reason, self._source)
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self._inner.connection_made(transport)
        self._arm(self._guard.header_timeout)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        messages = self._inner._messages  # noqa: SLF001 - the handler's parsed-request queue
        before = len(messages)
        self._inner.data_received(data)
        if len(messages) > before:  # a request's headers are complete
            payload = messages[-1][1]
            if payload.is_eof():
                self._handling()
            else:
                self._phase, self._payload = "body", payload
                self._arm(self._guard.body_timeout)
        elif self._phase == "body":
            if self._payload is None or self._payload.is_eof():
                self._handling()
        elif self._phase == "handling" and data:
            self._phase = "headers"  # the next request on a kept-alive connection
            self._arm(self._guard.header_timeout)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._payload = None
        if self._admitted:
            self._admitted = False
            self._guard.release(self._source)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def _handling(self) -> None:
        self._phase, self._payload = "handling", None
        self._disarm()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        self._guard.refused(f"{self._phase}_timeout", self._source)
        self._transport.abort()  # type: ignore[attr-defined]


class GuardedSite(BaseSite):
    """aiohttp's ``SockSite`` on an already-bound socket, with every connection guarded."""

    __slots__ = ("_sock", "_guard", "_name")

    def __init__(
        self,
        runner: BaseRunner,
        sock: Any,
        guard: ConnectionGuard,
        *,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context)
        self._sock = sock
        self._guard = guard
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        tls = self._ssl_context is not None
        self._server = await loop.create_server(
            lambda: GuardedProtocol(guard, server()),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=guard.header_timeout if tls else None,
            ssl_shutdown_timeout=2.0 if tls else None,
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def quiet_disconnects(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A handler whose client went away (a guard deadline aborted it mid-body) ends without a traceback."""
    try:
        return await handler(request)
    except ConnectionResetError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise
        return web.Response(status=408, text="request timeout\n")


class MalformedHttpLogFilter(logging.Filter):
    """aiohttp answers a request its parser cannot read (a control character in a header, a broken
    request line) with 400 and logs the parser's exception with a full traceback. Anyone on the LAN can
    send those, and a traceback reads as a fault of the daemon: keep one warning line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            source = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed HTTP request from %s refused (%s): %s"
            record.args = (source, exc.code, exc.message)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_http_logging() -> None:
    """Install :class:`MalformedHttpLogFilter` on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpLogFilter) for f in logger.filters):
        logger.addFilter(MalformedHttpLogFilter())
