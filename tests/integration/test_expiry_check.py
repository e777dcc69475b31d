"""``ckms expiry check`` (issue 14 part 5): an operator certificate 10 days from expiry raises an alert
through the CA's alert channel, leaves an audit record and makes the exit status 3; nothing due is 0.

A real ``ckms ca init`` home (SoftHSM, SQLite). The operator's certificate is brought near its end by
moving its notAfter in this throwaway home's database (what the check reads); device certificates
expiring in the window are counted per profile, never listed.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import tomllib
from pathlib import Path

import pytest
import tomli_w

from .conftest import CaHome, ckms, init_home


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaHome, Path]:
    ca = init_home(tmp_path_factory.mktemp("expiry") / "home")
    alerts = ca.home / "alerts.jsonl"
    path = ca.home / "ckms.toml"
    raw = tomllib.loads(path.read_text())
    raw["alerts"] = {"syslog": False, "command": ["/bin/sh", "-c", f"cat >> {alerts}"]}
    path.write_text(tomli_w.dumps(raw))
    return ca, alerts


def _set_not_after(ca: CaHome, serial: str, when: dt.datetime) -> None:
    with sqlite3.connect(ca.home / "db" / "ckms.sqlite3") as db:
        stored = db.execute("SELECT not_after FROM certificates WHERE serial=?", (serial,)).fetchone()[0]
        # the same textual form the store writes (UtcDateTime), only the instant changes
        form = "%Y-%m-%d %H:%M:%S.%f" if "." in str(stored) else "%Y-%m-%d %H:%M:%S"
        db.execute(
            "UPDATE certificates SET not_after=? WHERE serial=?",
            (when.astimezone(dt.UTC).replace(tzinfo=None).strftime(form), serial),
        )


def _operator_serial(ca: CaHome) -> str:
    with sqlite3.connect(ca.home / "db" / "ckms.sqlite3") as db:
        return db.execute("SELECT cert_serial FROM entities WHERE entity_id='demo-operator'").fetchone()[0]


def test_nothing_due_is_exit_0_and_no_alert(watched) -> None:
    ca, alerts = watched
    out = ckms("expiry", "check", "--home", str(ca.home), "--json", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    kinds = {c["kind"] for c in report["certificates"]}
    assert {"ca", "tls-server", "person"} <= kinds
    assert report["due"] == [] and report["devices"]["expiring"] == 0
    assert not alerts.exists()


def test_operator_10_days_from_expiry_alerts_and_is_audited(watched) -> None:
    ca, alerts = watched
    serial = _operator_serial(ca)
    _set_not_after(ca, serial, dt.datetime.now(dt.UTC) + dt.timedelta(days=10))
    out = ckms("expiry", "check", "--home", str(ca.home), "--json", check=False)
    assert out.returncode == 3, out.stdout + out.stderr
    report = json.loads(out.stdout)
    operator = next(c for c in report["certificates"] if c["name"] == "demo-operator")
    assert operator["due"] and 9.9 < operator["days_left"] <= 10
    assert [line for line in report["due"] if "demo-operator" in line]
    assert [a for a in report["alerts"] if a["channel"] == "command" and a["ok"]], report["alerts"]
    sent = [json.loads(line)["ckms_alert"] for line in alerts.read_text().splitlines()]
    assert sent[-1]["action"] == "expiry.check" and any("demo-operator" in d for d in sent[-1]["due"])
    records = ca.audit("expiry.check")
    assert records and json.loads(records[-1][5])["alerted"] == ["command"]
    # a window shorter than the 10 days left: not due, exit 0
    assert ckms("expiry", "check", "--home", str(ca.home), "--days", "5", check=False).returncode == 0


def test_devices_are_a_summary_per_profile(watched) -> None:
    ca, _ = watched
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with sqlite3.connect(ca.home / "db" / "ckms.sqlite3") as db:
        row = db.execute("SELECT * FROM certificates WHERE serial=?", (_operator_serial(ca),)).fetchone()
        columns = [d[0] for d in db.execute("SELECT * FROM certificates LIMIT 0").description]
    for i in range(3):  # three device rows shaped like real ones (the check reads the rows only)
        values = dict(zip(columns, row, strict=True))
        values |= {"serial": f"dead{i}", "kind": "end-entity", "profile": "device", "csr_sha256": None}
        values["pubkey_sha256"] = f"{i:064x}"
        with sqlite3.connect(ca.home / "db" / "ckms.sqlite3") as db:
            db.execute(
                f"INSERT INTO certificates ({','.join(values)}) VALUES ({','.join('?' * len(values))})",
                list(values.values()),
            )
        _set_not_after(ca, f"dead{i}", soon)
    out = ckms("expiry", "check", "--home", str(ca.home), "--json", "--no-alert", check=False)
    report = json.loads(out.stdout)
    assert report["devices"]["expiring"] == 3 and report["devices"]["by_profile"] == {"device": 3}
    assert not [c for c in report["certificates"] if c["serial"].startswith("dead")]
    assert out.returncode == 3


def test_bad_window_is_a_clear_error(watched) -> None:
    ca, _ = watched
    out = ckms("expiry", "check", "--home", str(ca.home), "--days", "-1", check=False)
    assert out.returncode == 1 and "--days must be between 0 and 3650" in out.stderr
