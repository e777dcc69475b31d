"""Expiry monitoring on the CA host (issue 14 part 5; A.62): the daily timer is installed and enabled, and
an operator certificate 10 days from expiry raises an alert.

The alert is proved on a SCRATCH copy of the CA home, never on the live one: the configuration, the CA
and TLS certificates (public parts only: no key, no PIN, no token) and a consistent copy of the SQLite
database (sqlite3 backup API, a read of the live database) go to a private temporary directory; in the
copy, an active operator's current certificate is moved to expire in 10 days, alerts go to a command
that appends to a file of the copy, and the deployed ``ckms expiry check`` runs on it. The same copy is
checked first without the change, so a watcher that alerted on everything (or on nothing) fails here.
"""

from __future__ import annotations

import json
import shlex

import pytest
from ckms_checks import CA_USER, CA_VENV, as_ckms, policy, systemd_props

testinfra_hosts = ["ansible://ca"]

# Runs on the CA host as the CA user with the CA's python: builds the scratch home and runs the check.
SCRATCH = r"""
import datetime as dt, json, os, shutil, sqlite3, subprocess, sys, tempfile, tomllib
import tomli_w
from sqlalchemy import select, update
from ckms_app.config import load_config
from ckms_app.store.engine import open_engine
from ckms_app.store.schema import certificates, entities, entity_roles

live = load_config(__import__("pathlib").Path(os.environ["CKMS_HOME"]))
if not live.database_url.startswith("sqlite"):
    print(json.dumps({"unsupported": live.database_url.split(":", 1)[0]})); sys.exit(0)
scratch = tempfile.mkdtemp(prefix="ckms-expiry-check-")
out = {"scratch": scratch}
try:
    raw = tomllib.loads((live.home / "ckms.toml").read_text())
    for sub in ("ca", "tls", "db", "log"):
        os.makedirs(os.path.join(scratch, sub), mode=0o700)
    shutil.copy(live.ca_cert, os.path.join(scratch, "ca", "ca.pem"))
    shutil.copy(live.server.tls_cert, os.path.join(scratch, "tls", "server.pem"))
    src = sqlite3.connect(f"file:{live.database_url.removeprefix('sqlite:///')}?mode=ro", uri=True)
    dst = sqlite3.connect(os.path.join(scratch, "db", "ckms.sqlite3"))
    src.backup(dst); src.close(); dst.close()
    alerts = os.path.join(scratch, "alerts.jsonl")
    raw["ca"]["cert"] = "ca/ca.pem"
    raw["ca"].pop("chain", None)
    raw["server"]["tls_cert"], raw["server"]["tls_key"] = "tls/server.pem", "tls/absent.key"
    raw["database"]["url"] = "sqlite:///db/ckms.sqlite3"
    raw["alerts"] = {"syslog": False, "command": ["/bin/sh", "-c", f"cat >> {alerts}"]}
    raw.setdefault("audit", {})["seal_log"] = "log/audit-seals.jsonl"
    with open(os.path.join(scratch, "ckms.toml"), "w") as f:
        f.write(tomli_w.dumps(raw))

    def check():
        p = subprocess.run([sys.executable, "-m", "ckms_app.cli.main", "expiry", "check", "--home", scratch,
                            "--json", "--days", os.environ["WARN_DAYS"]], capture_output=True, text=True)
        return {"rc": p.returncode, "report": json.loads(p.stdout) if p.stdout.strip() else None,
                "stderr": p.stderr[-800:]}

    engine = open_engine(f"sqlite:///{scratch}/db/ckms.sqlite3")
    with engine.begin() as conn:
        row = conn.execute(
            select(entities.c.entity_id, entities.c.cert_serial)
            .join(entity_roles, entity_roles.c.entity_id == entities.c.entity_id)
            .where(entity_roles.c.role == "operator", entities.c.status == "active",
                   entities.c.cert_serial.is_not(None))
            .order_by(entities.c.entity_id).limit(1)
        ).first()
    if row is None:
        out["operator"] = None
    else:
        out["operator"], out["serial"] = row.entity_id, row.cert_serial
        out["before"] = check()
        with engine.begin() as conn:
            conn.execute(update(certificates).where(certificates.c.serial == row.cert_serial)
                         .values(not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=10)))
        out["after"] = check()
        out["alerts"] = open(alerts).read().splitlines() if os.path.exists(alerts) else []
    engine.dispose()
finally:
    shutil.rmtree(scratch, ignore_errors=True)
out["scratch_removed"] = not os.path.exists(scratch)
print(json.dumps(out))
"""


def _person(report: dict | None, entity: str) -> dict | None:
    if not report:
        return None
    return next((c for c in report["certificates"] if c["kind"] == "person" and c["name"] == entity), None)


@pytest.mark.check("check:A.62.expiry_alert_operator_10_days")
def test_operator_certificate_10_days_from_expiry_raises_an_alert(host, evidence):
    warn_days = int(policy(host, "ckms_ca_expiry_warn_days") or 30)
    has_cli = as_ckms(host, f"{CA_VENV}/bin/ckms expiry check --help")
    assert has_cli.rc == 0, f"the deployed ckms has no 'expiry check': {has_cli.stderr.strip()[-300:]}"
    code = shlex.quote(SCRATCH)
    run = as_ckms(host, f"cd / && {CA_VENV}/bin/python -c {code}", env={"WARN_DAYS": str(warn_days)})
    assert run.rc == 0, f"the scratch run failed: {run.stderr.strip()[-800:]}"
    out = json.loads(run.stdout)
    if "unsupported" in out:
        pytest.fail(f"the scratch copy supports SQLite only; this CA uses {out['unsupported']}")
    evidence.add(
        "scratch copy", {k: out.get(k) for k in ("scratch", "scratch_removed", "operator", "serial")}
    )
    assert out["scratch_removed"], f"the scratch copy {out['scratch']} was left behind"
    assert out["operator"], "no active operator with a certificate on the CA: nothing to watch"
    before, after = out["before"], out["after"]
    evidence.add("unchanged copy", {"rc": before["rc"], "due": (before["report"] or {}).get("due")})
    evidence.add(
        "operator 10 days from expiry", {"rc": after["rc"], "due": (after["report"] or {}).get("due")}
    )
    evidence.add("alerts delivered", out["alerts"])
    seen_before = _person(before["report"], out["operator"])
    seen_after = _person(after["report"], out["operator"])
    assert seen_before is not None and not seen_before["due"], (
        f"before the change the operator's certificate must not be due: {seen_before}"
    )
    assert seen_after is not None and seen_after["due"] and 9 < seen_after["days_left"] <= 10, (
        f"the operator's certificate 10 days from expiry is not reported due: {seen_after}"
    )
    assert after["rc"] == 3, f"exit status {after['rc']} (3 = something due): {after['stderr']}"
    alerts = [json.loads(line)["ckms_alert"] for line in out["alerts"]]
    assert any(out["operator"] in line for a in alerts for line in a.get("due", [])), (
        f"no alert named {out['operator']}: {alerts}"
    )


@pytest.mark.check("check:A.62.expiry_timer_daily")
def test_expiry_timer_runs_the_check_daily(host, evidence):
    timer = systemd_props(host, "ckms-expiry.timer", "UnitFileState", "ActiveState")
    service = systemd_props(
        host,
        "ckms-expiry.service",
        "User",
        "ExecStart",
        "SuccessExitStatus",
        "Result",
        "ExecMainStartTimestamp",
    )
    calendar = host.run("systemctl cat ckms-expiry.timer").stdout
    evidence.add("timer", timer)
    evidence.add("service", service)
    assert timer.get("UnitFileState") == "enabled" and timer.get("ActiveState") == "active", timer
    assert service.get("User") == CA_USER, service
    assert "expiry check" in service.get("ExecStart", ""), service
    assert f"OnCalendar={policy(host, 'ckms_ca_expiry_schedule')}" in calendar, calendar
    if service.get("ExecMainStartTimestamp"):  # it has run: it must have worked (3 = due is a success)
        assert service.get("Result") == "success", f"the last expiry check failed: {service}"
