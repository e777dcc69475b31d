"""Run the daemon as N worker processes on shared listening sockets (A.41, A.42).

Python runs one request at a time per process, so the daemon forks one worker per CPU. The
supervisor binds the sockets, migrates the database once, forks the workers (each opens its
own token session, linter and database writer), prints one ``ready`` line when all are up,
forwards SIGTERM/SIGINT and waits for every worker to drain. A worker that dies unexpectedly
is replaced. Workers die with the supervisor (PR_SET_PDEATHSIG), so ``kill -9`` of the daemon
leaves no orphan holding the port or the token.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from ckms_app.authority.expiry_watch import crypto_period_warnings
from ckms_app.config import Config, load_config
from ckms_app.daemon.server import serve
from ckms_app.daemon.transport import ClientTable
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import utcnow

log = logging.getLogger("ckms.supervisor")
_PR_SET_PDEATHSIG = 1
# glibc mallopt(3) parameters
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def event_loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The workers' event loop (``[server] event_loop``): uvloop by default, the standard one on request."""
    if config.server.event_loop == "asyncio":
        return asyncio.new_event_loop
    import uvloop  # only where it is used: the CLI's own commands run on the standard loop

    return uvloop.new_event_loop


def worker_count(config: Config) -> int:
    return config.server.workers or max(1, min(os.cpu_count() or 1, 8))


def bind(host: str, port: int, backlog: int = 1024, wait_seconds: float = 10.0) -> socket.socket:
    """Bind, retrying briefly: after a crash the old workers may still be exiting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait_seconds
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.listen(backlog)
        sock.setblocking(False)
        return sock


def tune_allocator() -> bool:
    """Keep the workers' memory flat under a long mixed load (the soak): glibc's malloc otherwise raises
    its mmap threshold to the largest block ever freed, so every CRL-sized buffer (hundreds of KB, growing
    with the revocations) afterwards comes from the heap and fragments it, and each thread that runs
    token or database calls gets an arena of its own. A fixed 128 KiB threshold returns such buffers to
    the system when freed, and two arenas bound the rest. Set before the workers fork, so they inherit it.
    Returns whether the allocator accepted both settings (False on a libc without mallopt)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
        )
    except (OSError, AttributeError):
        return False


def supervise(config: Config) -> None:
    if not tune_allocator():
        log.warning("malloc tuning not available: worker memory may grow with the CRL size")
    engine = open_engine(config.database_url)
    migrate(engine)
    engine.dispose()
    est_sock = bind(config.server.listen, config.server.est_port)
    crl_sock = bind(config.server.listen, config.server.crl_port)
    n = worker_count(config)
    clients = ClientTable(n)  # connections per source address, shared by the workers (per-client cap)
    ready_r, ready_w = os.pipe()
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # worker
            os.close(ready_r)
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            clients.use_row(index)
            try:
                with asyncio.Runner(loop_factory=event_loop_factory(config)) as runner:
                    runner.run(
                        serve(
                            config,
                            est_sock,
                            crl_sock,
                            worker=index,
                            runs_publisher=index == 0,
                            on_ready=lambda: os.write(ready_w, b"r"),
                            clients=clients,
                        )
                    )
            except BaseException:  # noqa: BLE001 - report and exit non-zero; the supervisor restarts us
                log.exception("worker %d failed", index)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Start workers one after another: SoftHSM's file-backed token can fail C_Initialize/OpenSession
    # (GeneralError, "no token") when several processes load it at the same instant.
    for i in range(n):
        spawn(i)
        if not _wait_ready(ready_r, children):
            forward(signal.SIGTERM, None)
            raise SystemExit("a worker exited during start-up; see the log above")
    print(
        json.dumps(
            {
                "event": "ready",
                "workers": n,
                "est_url": config.server.est_url,
                "crl_url": config.server.crl_url("full", config.ca_generation),
            }
        ),
        flush=True,
    )
    log.info(
        "ckms serving EST on %s and CRLs on %s with %d workers",
        config.server.est_url,
        config.server.crl_base_url,
        n,
    )
    # A.59/A.62: say at every start when the CA outlives its algorithm or a profile no longer fits.
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    for warning in crypto_period_warnings(config, ca_cert, utcnow()):
        log.warning("crypto-period: %s", warning)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is not None and not stopping:
            log.error("worker %d (pid %d) exited with status %d; starting a new one", index, pid, status)
            time.sleep(0.5)
            spawn(index)
    print(json.dumps({"event": "stopped"}), flush=True)


def _wait_ready(ready_r: int, children: dict[int, int]) -> bool:
    """Wait for one worker's ready byte; False if a worker died first."""
    while True:
        readable, _, _ = select.select([ready_r], [], [], 0.2)
        if readable:
            return bool(os.read(ready_r, 1))
        if _reap(children, block=False):
            return False


def _reap(children: dict[int, int], block: bool) -> list[int]:
    gone = []
    for pid in list(children):
        done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done:
            gone.append(pid)
            children.pop(pid)
    return gone


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def run(home: Path) -> None:
    """``ckms ca serve``: log to stderr, then supervise the workers until a signal."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    supervise(load_config(home))
