"""A killed daemon loses nothing a client received; SIGTERM finishes in-flight work (A.61, F.52).

Clients issue continuously over keep-alive mTLS connections while the daemon is killed with
SIGKILL (or stopped with SIGTERM). Every certificate a client holds must be in the database
afterwards, serials must be unique, and the restarted daemon must be healthy.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config
from ckms_app.errors import ClientError

from .conftest import CaHome, Daemon, init_home, make_csr


class Load:
    """N client threads, each enrolling in a loop until stopped or its connection dies."""

    def __init__(self, ca: CaHome, clients: int) -> None:
        self.config = load_config(ca.home)
        self.creds = Credentials(*ca.cred("operator"))
        self.received: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        n = 0
        with CkmsClient(self.config, self.creds, timeout=10) as client:
            while not self._stop.is_set():
                csr = make_csr(f"dev-{index}-{n}")[0]
                n += 1
                try:
                    cert = client.enroll(csr)
                except ClientError as exc:
                    with self._lock:
                        self.errors.append(str(exc))
                    return
                with self._lock:
                    self.received.append(cert.serial_number)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def stored_serials(home: Path) -> list[str]:
    with sqlite3.connect(home / "db" / "ckms.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [r[0] for r in conn.execute("SELECT serial FROM certificates")]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_kill_9_during_sustained_issuance_loses_nothing(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "crash")
    daemon = Daemon(ca)
    daemon.start()
    load = Load(ca, clients=6)
    load.start()
    wait_for(lambda: len(load.received) >= 150)
    daemon.stop(signal.SIGKILL)
    load.stop()
    received = list(load.received)
    assert received and load.errors  # clients saw the crash

    daemon.start()  # restart on the same home: database and token recover
    stored = stored_serials(ca.home)
    assert len(stored) == len(set(stored)), "serials must be unique"
    missing = {format(s, "x") for s in received} - set(stored)
    assert not missing, f"{len(missing)} certificates a client holds are not in the database"
    # Healthy after restart: issuance works and the CRL is served.
    config = load_config(ca.home)
    with CkmsClient(config, Credentials(*ca.cred("operator"))) as client:
        cert = client.enroll(make_csr("device-after-crash")[0])
        status, _, body = client.request("GET", "/health")
    assert status == 200 and b'"status": "ok"' in body
    assert format(cert.serial_number, "x") in stored_serials(ca.home)
    daemon.stop()


def test_sigterm_finishes_in_flight_requests_and_records_the_stop(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "term")
    daemon = Daemon(ca)
    daemon.start()
    load = Load(ca, clients=4)
    load.start()
    wait_for(lambda: len(load.received) >= 60)
    started = time.monotonic()
    rc = daemon.stop(signal.SIGTERM)
    took = time.monotonic() - started
    load.stop()
    # Keep-alive clients may hold the listener for the whole shutdown grace (10 s by default); the writer's
    # flush and the daemon.stop record come after it. So the bound is the grace plus a little, not the grace.
    assert rc == 0 and took < 12, f"stop took {took:.1f} s (rc {rc}):\n{daemon.rest[-3000:]}"
    assert '"stopped"' in daemon.rest
    stored = set(stored_serials(ca.home))
    assert {format(s, "x") for s in load.received} <= stored
    # No client got a half answer: every failure is a refused/closed connection, not a broken response.
    # (Nor a 503 from a connection whose handshake ended while the worker was already closing.)
    assert all("enrolment refused" not in e for e in load.errors), load.errors
    assert ca.audit("daemon.stop")[-1][4] == "success"
