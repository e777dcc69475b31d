"""pytest plugin for the hardening checks: each check names its catalog ID and records evidence.

Checks are testinfra tests run over SSH against an Ansible inventory::

    @pytest.mark.check("check:F.06.j.ports_closed")
    def test_ports_closed(host, evidence):
        listeners = host.socket.get_listening_sockets()
        evidence.add("listening", listeners)
        assert ...

``--ckms-results FILE`` writes one JSON record per (check, host): outcome, duration, evidence and, on
failure, the assertion message. ``hardening.report`` joins these records with the control catalog.
With ``CKMS_RUN_ID`` in the environment (``python -m hardening.provenance start``), every record carries
it as ``run_id``, so the report can tell this run's records from another run's.

A check that can verify only part of its control on this platform (a lab container has no AppArmor in
its kernel, no visible firmware, no signature download) verifies that part and states what it could
not see with ``evidence.limit("...")``: the record carries it as ``limitation`` and the report shows
it next to the item, so a pass at configuration level is never mistaken for a full one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

_RESULTS_KEY = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ckms-results", default=None, help="write check results (JSON) for the hardening report"
    )
    parser.addoption(
        "--ckms-only-checks",
        default=None,
        help="run only the checks with these catalog IDs (comma-separated, e.g. check:A.05.x,check:E.09.y);"
        " used by the breakage run (hardening/breakage) to re-run one item's checks",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "check(check_id): the catalog check this test implements (check:<item>...)"
    )
    config.stash[_RESULTS_KEY] = []


class Evidence:
    """What a check saw, kept for the report whether the check passed or failed."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.limitations: list[str] = []

    def add(self, label: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        self.items.append({"label": label, "value": text[:4000]})

    def limit(self, what_was_not_verifiable: str) -> None:
        """Record what this platform does not let the check observe (shown in the report)."""
        self.limitations.append(what_was_not_verifiable)
        self.add("not verifiable here", what_was_not_verifiable)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--ckms-only-checks``: deselect every test whose ``check`` marker is not one of the IDs."""
    wanted_opt = config.getoption("--ckms-only-checks")
    if not wanted_opt:
        return
    wanted = {c.strip() for c in wanted_opt.split(",") if c.strip()}
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("check")
        (keep if marker is not None and marker.args[0] in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Evidence:
    ev = Evidence()
    request.node.stash[_EVIDENCE_KEY] = ev
    return ev


_EVIDENCE_KEY = pytest.StashKey[Evidence]()


def _host_name(item: pytest.Item) -> str:
    host = getattr(item, "funcargs", {}).get("host")
    if host is None:
        return "local"
    backend = host.backend
    return getattr(backend, "hostname", None) or getattr(backend, "host", None) or str(backend)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("check")
    if marker is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        ev = item.stash.get(_EVIDENCE_KEY, None)
        item.config.stash[_RESULTS_KEY].append(
            {
                "check": marker.args[0],
                "test": item.nodeid,
                "host": _host_name(item),
                "outcome": report.outcome,  # passed | failed | skipped
                "duration_s": round(report.duration, 3),
                "message": str(report.longrepr.reprcrash.message)
                if report.failed and hasattr(report.longrepr, "reprcrash")
                else (
                    str(report.longrepr[2]) if report.skipped and isinstance(report.longrepr, tuple) else None
                ),
                "evidence": ev.items if ev else [],
                "limitation": "; ".join(ev.limitations) if ev and ev.limitations else None,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "run_id": os.environ.get("CKMS_RUN_ID") or None,  # hardening.provenance: one run
            }
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--ckms-results")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(session.config.stash[_RESULTS_KEY], indent=1))
