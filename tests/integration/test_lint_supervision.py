"""Killing the lint helper under load (issue 11 item 8): no certificate is issued unlinted, requests meanwhile
get 503 with a retry hint, and issuance resumes by itself.

The daemon's ``[lint] binary`` is a tap (``lint_tap.py``) in front of the real ckms-lint that logs every
serial it is asked to lint: every certificate in the database must be in that log. The test kills the
tap (the worker's helper) with SIGKILL while three clients enrol as fast as they can.
"""

from __future__ import annotations

import base64
import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckms_app.authority.linter import find_linter_binary

from .conftest import CaHome, Daemon, ckms, init_home, make_csr

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaHome, Daemon, Path]]:
    base = tmp_path_factory.mktemp("lint-tap")
    ca = init_home(base / "home")
    log = base / "linted-serials.log"
    tap = base / "ckms-lint-tap"
    tap.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "lint_tap.py"}" "{find_linter_binary()}" "{log}" "$@"\n'
    )
    tap.chmod(0o755)
    config = ca.home / "ckms.toml"
    text = config.read_text().replace("workers = 0", "workers = 1")
    config.write_text(text.replace("[lint]\nenabled = true\n", f'[lint]\nenabled = true\nbinary = "{tap}"\n'))
    ckms("selftest", "--home", str(ca.home), "--record")
    daemon = Daemon(ca)
    daemon.start()
    yield ca, daemon, log
    daemon.stop()


def _tap_pids(daemon: Daemon) -> list[int]:
    """The lint taps below this daemon (its worker's helper; the real ckms-lint is the tap's child)."""
    assert daemon.proc is not None
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    below, todo = set(), [daemon.proc.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            below.add(child)
            todo.append(child)
    return [int(pid) for pid, _, args in rows if int(pid) in below and "lint_tap.py" in args]


def _one_tap(daemon: Daemon, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = _tap_pids(daemon)
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.1)
    tree = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    raise AssertionError(f"expected one lint helper below the daemon, found {_tap_pids(daemon)}:\n{tree}")


def _client(ca: CaHome) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    cert, key = ca.cred("operator")
    ctx.load_cert_chain(str(cert), str(key))
    host, port = ca.est_url.split("//")[1].split("/")[0].rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)


def _enrol_loop(ca: CaHome, name: str, stop: threading.Event, out: list[tuple[float, int, bytes]]) -> None:
    conn = _client(ca)
    n = 0
    while not stop.is_set():
        n += 1
        body = base64.encodebytes(make_csr(f"{name}-{n}")[0])
        try:
            conn.request(
                "POST", "/.well-known/est/simpleenroll", body, {"Content-Type": "application/pkcs10"}
            )
            resp = conn.getresponse()
            out.append((time.monotonic(), resp.status, resp.read()))
        except (OSError, http.client.HTTPException) as exc:  # a closed keep-alive connection: reconnect
            out.append((time.monotonic(), 0, repr(exc).encode()))
            conn.close()
            conn = _client(ca)
        if out[-1][1] == 503:
            time.sleep(0.05)  # as a client honouring Retry-After would, only faster
    conn.close()


def test_killing_the_lint_helper_under_load(tapped: tuple[CaHome, Daemon, Path]) -> None:
    ca, daemon, linted_log = tapped
    first = _one_tap(daemon)
    results: list[tuple[float, int, bytes]] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_enrol_loop, args=(ca, f"dev-load-{i}", stop, results)) for i in range(3)
    ]
    for c in clients:
        c.start()
    time.sleep(2.0)
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    time.sleep(4.0)
    stop.set()
    for c in clients:
        c.join(60)

    statuses = {status for _, status, _ in results}
    assert statuses <= {200, 503}, [(s, b[:200]) for _, s, b in results if s not in (200, 503)]
    refused = [body for _, status, body in results if status == 503]
    assert refused, "the kill landed between requests: no request saw the helper down"
    assert all(body.startswith(b"lint_unavailable: ") for body in refused), refused[:3]
    assert any(t < killed_at and s == 200 for t, s, _ in results)
    assert any(t > killed_at and s == 200 for t, s, _ in results), "issuance did not resume by itself"
    second = _one_tap(daemon)
    assert second != first

    # Nothing unlinted: every certificate the CA holds was put to the linter first.
    linted = set(linted_log.read_text().split())
    with ca.db() as conn:
        issued = {row[0] for row in conn.execute("SELECT serial FROM certificates WHERE kind='end-entity'")}
    assert issued and issued <= linted, sorted(issued - linted)[:5]
    assert len(issued) == sum(1 for _, s, _ in results if s == 200)
    # Every refusal is on the trail as the CA's failure, not the client's.
    errors = [r for r in ca.audit("certificate.issue") if r[4] == "error" and "lint_unavailable" in r[5]]
    assert len(errors) == len(refused)
    assert "Traceback" not in daemon.log.read_text()
