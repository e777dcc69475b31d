"""Assurance checks on the running CA (guidance F.07, F.12, F.14-F.16, F.24, F.35, F.48, F.54-F.56).

They exercise the deployed daemon and its own code on the CA host, without harming the live CA:

* the trail, the self-test records and /health are read (``ckms_probe.py`` with the CA's python);
* what has to be damaged to show that damage is caught is a scratch copy that the check removes:
  a copy of the database with one record edited (F.48), a copy of the installed code with one file
  changed (F.56), a backup restored into a scratch home and token (F.54);
* issuance and CRL tests (F.35) go through the deployed daemon from the certificate-management terminal;
* the token's login and PINs (F.06 f, F.08) and the hash-pinned wheelhouse (F.11 a, F.27) of the deployed CA.

They need the whole deployment (site.yml), so no role's Molecule scenario runs this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ckms_checks import (
    CA_HOME,
    CA_USER,
    CA_VENV,
    REPO,
    active_ca_cert,
    as_ckms,
    crl_path,
    inventory_vars,
    policy,
    probe,
    systemd_props,
)
from ckms_custody import available, staged
from ckms_deployed import deployed_is, exported_commit, local, run_pytest
from ckms_people import ckms_as, issue_and_revoke, propose_and_approve, withdraw

testinfra_hosts = ["ansible://ca"]

SITE = f"{CA_VENV}/lib/python3.*/site-packages"
UNIT = "ckms-ca.service"
SELFTEST_TIMER = "ckms-selftest.timer"


def _active_since(host) -> str:
    """When the daemon's current run started (ISO, UTC), from systemd."""
    raw = systemd_props(host, UNIT, "ActiveEnterTimestamp").get("ActiveEnterTimestamp", "")
    out = host.run(f"date -u -d {shlex.quote(raw)} +%Y-%m-%dT%H:%M:%S").stdout.strip() if raw else ""
    return out


def _detail(rec: dict) -> dict:
    try:
        return json.loads(rec.get("detail") or "{}")
    except ValueError:
        return {}


def _public_host(host) -> str:
    m = re.search(r'^public_host\s*=\s*"([^"]+)"', host.file(f"{CA_HOME}/ckms.toml").content_string, re.M)
    return m.group(1) if m else "127.0.0.1"


def _other(request, group: str):
    """A testinfra host of another inventory group (the terminal), or None."""
    import testinfra
    from testinfra.utils.ansible_runner import AnsibleRunner

    inv = request.config.getoption("ansible_inventory")
    hosts = AnsibleRunner(inv).get_hosts(group)
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inv) if hosts else None


# ------------------------------------------------------------------------------ F.07 / F.24 a
@pytest.mark.check("check:F.07.application_integrity_at_start")
def test_application_integrity_at_start(host, evidence):
    since = _active_since(host)
    starts = probe(host, "trail", "--action", "selftest.run", "--action", "daemon.start", "--limit", "200")[
        "records"
    ]
    current = [r for r in starts if r["at"][:19] >= since[:19]] if since else []
    at_start = [r for r in current if r["action"] == "selftest.run" and _detail(r).get("trigger") == "start"]
    evidence.add("daemon running since (UTC)", since or "not running")
    evidence.add(
        "self-test records of this start",
        [{k: r[k] for k in ("seq", "at", "outcome", "detail")} for r in at_start],
    )
    now = probe(host, "integrity")
    evidence.add("integrity of the installed code now", now)
    manifest = host.file(f"{CA_HOME}/selftest-manifest.json")
    evidence.add("manifest", f"{manifest.exists and manifest.mode:o}" if manifest.exists else "missing")
    assert since, "F.07: the CA daemon is not running"
    assert at_start, "F.07: no start-up self-test record for the daemon's current start"
    assert all(r["outcome"] == "success" for r in at_start), f"F.07: start-up self-test failed: {at_start}"
    assert now["ok"] and now["name"] == "integrity", (
        f"F.07: installed code differs from the signed manifest: {now}"
    )


@pytest.mark.check("check:F.24.a.kat_at_startup")
def test_kat_at_startup(host, evidence):
    since = _active_since(host)
    recs = probe(host, "trail", "--action", "selftest.run", "--limit", "200")["records"]
    at_start = [
        r for r in recs if since and r["at"][:19] >= since[:19] and _detail(r).get("trigger") == "start"
    ]
    kat = probe(host, "kat")["checks"]
    evidence.add(
        "start-up self-test records (this start)",
        [{k: r[k] for k in ("seq", "at", "outcome", "detail")} for r in at_start],
    )
    evidence.add("known-answer tests run now with the installed code", kat)
    assert at_start and all(r["outcome"] == "success" for r in at_start), (
        "F.24 a: the daemon's current start has no passed start-up self-test (KAT, pairwise, integrity) record"
    )
    names = {c["name"] for c in kat}
    assert {"kat.sha256", "kat.sha384", "kat.ecdsa_p256_verify"} <= names, f"F.24 a: KATs missing: {names}"
    assert all(c["ok"] for c in kat), f"F.24 a: known-answer test failed: {[c for c in kat if not c['ok']]}"


# --------------------------------------------------------------------------------------- F.24 c
@pytest.mark.check("check:F.24.c.health_endpoint_reports_faults")
def test_health_endpoint_reports_faults(host, evidence):
    ph = _public_host(host)
    est = host.run(
        f"curl -s -w '\\n%{{http_code}}' --max-time 10 --cacert {CA_HOME}/ca/ca.pem https://{ph}:8443/health"
    )
    crl = host.run(f"curl -s -w '\\n%{{http_code}}' --max-time 10 http://{ph}:8080/health")
    evidence.add("EST /health", est.stdout)
    evidence.add("CRL /health", crl.stdout)
    for name, res in (("EST", est), ("CRL", crl)):
        assert res.rc == 0, f"F.24 c: {name} /health does not answer: {res.stderr.strip()}"
        body, _, code = res.stdout.rpartition("\n")
        data = json.loads(body)
        checks = data.get("checks", {})
        # every component whose failure the daemon must report has its own line
        need = {"database", "hsm", "linter"}
        assert need <= set(checks), f"F.24 c: {name} /health does not report {sorted(need - set(checks))}"
        assert len(checks) > len(need), f"F.24 c: {name} /health reports no error-state/clock line: {checks}"
        bad = {k: v for k, v in checks.items() if v != "ok"}
        # the status code follows the components: 200 only when all are ok, 503 otherwise
        assert (code == "200") == (not bad) and data["status"] == ("ok" if not bad else "error"), (
            f"F.24 c: {name} /health status {code}/{data['status']} does not match its checks {checks}"
        )
        assert not bad, f"F.24 c: {name} /health reports faults: {bad}"


# --------------------------------------------------------------------------------------- F.24 d
@pytest.mark.check("check:F.24.d.periodic_self_test")
def test_periodic_self_test(host, evidence):
    timer = systemd_props(
        host,
        SELFTEST_TIMER,
        "ActiveState",
        "UnitFileState",
        "TimersCalendar",
        "NextElapseUSecRealtime",
        "LastTriggerUSec",
    )
    svc = systemd_props(
        host,
        "ckms-selftest.service",
        "User",
        "ExecStart",
        "Result",
        "ExecMainStatus",
        "ExecMainExitTimestamp",
        "NoNewPrivileges",
        "ProtectSystem",
    )
    evidence.add("timer", timer)
    evidence.add("service", {k: v[:300] for k, v in svc.items()})
    recs = probe(host, "trail", "--action", "selftest.run", "--limit", "500")["records"]
    periodic = [r for r in recs if r["entity_id"].startswith("local:") and r["role"] == "administrator"]
    evidence.add(
        "last periodic self-test records",
        [{k: r[k] for k in ("seq", "at", "entity_id", "outcome")} for r in periodic[-3:]],
    )
    assert timer.get("ActiveState") == "active" and timer.get("UnitFileState") == "enabled", (
        "F.24 d: the periodic self-test timer is not active and enabled"
    )
    assert "selftest" in svc.get("ExecStart", "") and svc.get("User") == CA_USER, (
        f"F.24 d: the timer does not run 'ckms selftest' as {CA_USER}"
    )
    assert svc.get("Result") == "success" and svc.get("ExecMainStatus") == "0", (
        f"F.24 d: the last periodic self-test failed (Result={svc.get('Result')}, status={svc.get('ExecMainStatus')})"
    )
    assert periodic, "F.24 d: no periodic self-test has run yet (no selftest.run record from the timer)"
    assert periodic[-1]["outcome"] == "success", f"F.24 d: the last periodic self-test failed: {periodic[-1]}"


# ------------------------------------------------------------------------------------ F.12 / F.14
AUDIT_FIELDS = ("seq", "at", "entity_id", "role", "action", "target", "outcome", "detail", "chain_hash")


def _issue_and_revoke(host, request, tag: str) -> tuple[str, dict]:
    """A named operator (operator-1, their own key on the terminal) issues a certificate through the
    deployed daemon over EST, revokes it and publishes a CRL over the API (ckms_people.issue_and_revoke)."""
    done = issue_and_revoke(
        host, _other(request, "terminal"), _public_host(host), f"{tag}-{int(time.time())}"
    )
    assert done["issued"] == 200 and done["revoked"] == 200, f"issue/revoke through the daemon failed: {done}"
    return done["serial"], done


@pytest.mark.check("check:F.12.ca_events_audited")
def test_ca_events_audited(host, request, evidence):
    since = host.run("date -u +%Y-%m-%dT%H:%M:%S").stdout.strip()
    serial, _ = _issue_and_revoke(host, request, "check-f12")
    time.sleep(1.0)  # the daemon's group-commit writer flushes within milliseconds
    recs = probe(host, "trail", "--since", since, "--limit", "200")["records"]
    want = serial.lower().lstrip("0")
    issued = [
        r for r in recs if r["action"] == "certificate.issue" and want in (r["target"] + r["detail"]).lower()
    ]
    revoked = [
        r for r in recs if r["action"] == "certificate.revoke" and want in (r["target"] + r["detail"]).lower()
    ]
    life = probe(host, "trail", "--action", "daemon.start", "--action", "selftest.run", "--limit", "5")[
        "records"
    ]
    evidence.add("serial issued and revoked by the check", serial)
    evidence.add(
        "trail records since",
        {
            "since": since,
            "records": [
                {k: r[k] for k in ("seq", "action", "target", "outcome", "entity_id", "role")} for r in recs
            ],
        },
    )
    evidence.add(
        "daemon life-cycle records (last)",
        [{k: r[k] for k in ("seq", "at", "action", "outcome")} for r in life],
    )
    assert issued, f"F.12: issuing {serial} left no certificate.issue record in the CA's trail"
    assert revoked, f"F.12: revoking {serial} left no certificate.revoke record in the CA's trail"
    assert {r["action"] for r in life} >= {"daemon.start", "selftest.run"}, (
        "F.12: daemon start and self-test events are not in the trail"
    )


@pytest.mark.check("check:F.14.audit_record_fields_present")
def test_audit_record_fields_present(host, evidence):
    recs = probe(host, "trail", "--limit", "300")["records"]
    outcomes = {"success", "denied", "error"}
    bad = []
    for r in recs:
        missing = [f for f in AUDIT_FIELDS if r.get(f) in (None, "")]
        if missing or r["outcome"] not in outcomes:
            bad.append({"seq": r.get("seq"), "missing": missing, "outcome": r.get("outcome")})
        else:
            try:
                dt.datetime.fromisoformat(str(r["at"]))
            except ValueError:
                bad.append({"seq": r["seq"], "at": r["at"]})
    evidence.add("records examined", len(recs))
    evidence.add(
        "who / when / target / action / outcome (last 5)",
        [
            {k: r[k] for k in ("seq", "at", "entity_id", "role", "target", "action", "outcome")}
            for r in recs[-5:]
        ],
    )
    evidence.add("records lacking a field", bad[:20] or "none")
    assert recs, "F.14: the CA's audit trail is empty"
    assert not bad, f"F.14: audit records without who/when/target/action/outcome: {bad[:5]}"


# ------------------------------------------------------------------------------------------- F.15
def _alerts(host, since: str) -> list[dict]:
    """Alerts delivered since ``since`` (syslog authpriv through the journal, or the daemon's fallback file)."""
    journal = host.run(
        f"journalctl -q --no-pager -o cat --since {shlex.quote(since.replace('T', ' '))} SYSLOG_FACILITY=10"
    ).stdout
    fallback = host.run(f"cat {CA_HOME}/log/alerts.log 2>/dev/null").stdout
    out = []
    for line in (journal + "\n" + fallback).splitlines():
        m = re.search(r"(\{\"ckms_alert\".*\})\s*$", line)
        if m:
            try:
                out.append(json.loads(m.group(1))["ckms_alert"])
            except ValueError:
                pass
    return out


@pytest.mark.check("check:F.15.role_change_alerts")
def test_role_change_alerts(host, evidence):
    """A role change goes through two persons (admin-1 proposes registering a scratch auditor, authority-1
    approves; then it is disabled the same way) and an attempted self-grant (admin-1 proposing a new
    administrator) is refused: each must be in the trail and reach the administrators as an alert at
    once, the applied change naming proposer and approver."""
    since = host.run("date -u +%Y-%m-%dT%H:%M:%S").stdout.strip()
    scratch = f"check-f15-{int(time.time())}"
    proposed, approved = propose_and_approve(
        host, "admin-1", "authority-1", f"entity add {scratch} --role auditor"
    )
    self_grant = ckms_as(host, "admin-1", f"entity add {scratch}-x --role administrator")
    withdraw(host, "authority-1", self_grant)
    disabled = (
        propose_and_approve(host, "admin-1", "authority-1", f"entity disable {scratch}")
        if approved is not None and approved.rc == 0
        else (None, None)
    )
    time.sleep(1.0)
    recs = [
        r
        for r in probe(host, "trail", "--since", since, "--limit", "200")["records"]
        if scratch in str(r["target"]) or r["action"].startswith("change.")
    ]
    alerts = [a for a in _alerts(host, since) if scratch in str(a.get("target", ""))]
    created = [a for a in alerts if a.get("action") == "entity.create" and a.get("outcome") == "success"]
    refused = [a for a in alerts if a.get("outcome") == "denied" and a.get("entity_id") == "admin-1"]
    detail = created[-1].get("detail") if created else {}
    detail = json.loads(detail) if isinstance(detail, str) else (detail or {})
    evidence.add(
        "admin-1 proposes a scratch auditor", proposed.stdout.strip()[-300:] or proposed.stderr[-300:]
    )
    evidence.add(
        "authority-1 approves",
        "not reached" if approved is None else (approved.stdout.strip()[-300:] or approved.stderr[-300:]),
    )
    evidence.add(
        "admin-1 proposes a new administrator (self-grant)", f"rc={self_grant.rc} {self_grant.stderr[-200:]}"
    )
    evidence.add("scratch entity disabled again", None if disabled[1] is None else disabled[1].rc == 0)
    evidence.add(
        "trail",
        [{k: r[k] for k in ("seq", "at", "entity_id", "role", "action", "target", "outcome")} for r in recs],
    )
    evidence.add("alerts delivered (syslog authpriv, ident ckms)", alerts)
    assert approved is not None and approved.rc == 0, "F.15: the two-person role change did not go through"
    assert self_grant.rc != 0, "F.15: admin-1 could propose an administrator (a role they hold)"
    assert any(r["action"] == "entity.create" and r["outcome"] == "success" for r in recs), (
        "F.15: the approved role change is not in the trail"
    )
    assert created, "F.15: no real-time alert for the approved role change"
    assert detail.get("proposer") == "admin-1" and detail.get("approver") == "authority-1", (
        f"F.15: the alert does not name proposer and approver: {detail}"
    )
    assert refused, "F.15: no real-time alert for the refused self-grant"


# ------------------------------------------------------------------------------------------- F.16
#: chapters whose coverage gaps fail F.16 (the report lists the gaps of every chapter)
REQUIRED_CHAPTERS = ("A", "E", "F")


@pytest.mark.check("check:F.16.report_covers_every_automated_item")
def test_report_covers_every_automated_item(host, request, evidence):
    """Every item's evidence exists (hardening.coverage: named checks, cited documents, tools, tests) and
    every check the catalog names was collected in this run or is run by a drill."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from hardening.catalog import load_catalog
    from hardening.coverage import coverage_gaps, implemented_checks

    catalog = load_catalog()
    gaps = coverage_gaps(catalog)
    defined = implemented_checks()
    collected = {m.args[0] for item in request.session.items for m in item.iter_markers("check")}
    drills = {cid for cid, where in defined.items() if where.startswith("tests/lab/drills/")}
    named = {cid for c in catalog.values() if c.applicability != "not-applicable" for cid in c.all_checks()}
    not_collected = sorted(
        cid for cid in named if cid in defined and cid not in collected and cid not in drills
    )
    automated = sum(1 for c in catalog.values() if c.applicability == "automated")
    evidence.add("automated items", automated)
    evidence.add("checks the catalog names", len(named))
    evidence.add("checks collected in this run", len(collected))
    evidence.add("checks run by the drills (tests/lab/drills)", sorted(drills))
    evidence.add("coverage gaps (hardening.coverage)", [str(g) for g in gaps] or "none")
    evidence.add("defined checks not collected in this run", not_collected or "none")
    required = [g for g in gaps if g.item[0] in REQUIRED_CHAPTERS]
    assert not required, f"F.16: {len(required)} coverage gap(s): {[str(g) for g in required][:15]}"
    assert not not_collected, f"F.16: checks defined but not collected in this run: {not_collected}"


# ------------------------------------------------------------------------------------------- F.35
@pytest.mark.check("check:F.35.issuance_tests_pass")
def test_issuance_tests_pass(host, request, evidence):
    term = _other(request, "terminal")
    if term is None:
        pytest.skip("F.35: no terminal host in this inventory")
    cn = f"check-f35-{int(time.time())}"
    out = term.run(
        f"d=$(mktemp -d) && ckms-enroll --as operator-1 {cn} $d && "
        f"openssl verify -x509_strict -purpose sslclient -CAfile /etc/ckms-terminal/ca.pem $d/{cn}.pem && "
        f"openssl x509 -in $d/{cn}.pem -noout -subject -issuer -dates -ext keyUsage,extendedKeyUsage && "
        f"openssl pkey -in $d/{cn}.key -pubout >$d/pub && "  # POSIX sh (the automation account's sudo sh)
        f"openssl x509 -in $d/{cn}.pem -noout -pubkey | cmp -s - $d/pub && echo key-matches; rm -rf $d",
    )
    evidence.add("terminal: enrol over EST, verify chain and key", (out.stdout + out.stderr)[-2500:])
    # a request that the CA policy must refuse: a subject the profile does not allow
    bad = term.run(
        "d=$(mktemp -d) && . /etc/ckms-terminal/est.conf && cd $d && "
        "openssl ecparam -genkey -name prime256v1 -noout -out k && "
        "openssl req -new -key k -subj '/CN=bad name with spaces!' -outform DER | base64 -w0 > r && "
        "curl -s -o /dev/null -w '%{http_code}' --tlsv1.3 --cacert /etc/ckms-terminal/ca.pem "
        "--cert /etc/ckms-terminal/people/operator-1/cert.pem --key /etc/ckms-terminal/people/operator-1/key.pem "
        "-H 'Content-Type: application/pkcs10' --data-binary @r $EST_URL/simpleenroll; rm -rf $d"
    )
    evidence.add("policy-violating request (HTTP status)", bad.stdout.strip())
    assert out.rc == 0, f"F.35: issuance from the terminal failed: {(out.stdout + out.stderr)[-500:]}"
    assert f"{cn}.pem: OK" in out.stdout and "key-matches" in out.stdout
    assert f"CN = {cn}" in out.stdout and "TLS Web Client Authentication" in out.stdout
    assert bad.stdout.strip().startswith("4"), (
        f"F.35: a request violating the profile was not refused ({bad.stdout})"
    )


@pytest.mark.check("check:F.35.crl_tests_pass")
def test_crl_tests_pass(host, request, evidence):
    term = _other(request, "terminal")
    if term is None:
        pytest.skip("F.35: no terminal host in this inventory")
    serial, done = _issue_and_revoke(host, request, "check-f35-crl")
    evidence.add(
        "revoked serial / publish (operator-1, API)", {"serial": serial, "publish": done["crl_published"]}
    )
    ph = _public_host(host)
    res = term.run(
        f"d=$(mktemp -d) && cd $d && curl -sf --max-time 10 -o full.crl http://{ph}:8080{crl_path(host)} && "
        f"curl -sf --max-time 10 -o delta.crl http://{ph}:8080{crl_path(host, 'delta')}; "
        'for c in full delta; do test -s $c.crl || continue; echo "== $c"; '
        "openssl crl -inform DER -in $c.crl -CAfile /etc/ckms-terminal/ca.pem -noout -verify "
        "-lastupdate -nextupdate -crlnumber 2>&1; "
        "openssl crl -inform DER -in $c.crl -noout -text | grep -c 'Serial Number: " + serial.upper() + "'; "
        "done; cd /; rm -rf $d"
    )
    evidence.add("terminal: CRLs fetched over HTTP and verified with openssl", res.stdout[-2500:])
    text = res.stdout
    assert done["crl_published"] == 200, f"F.35: CRL publication failed: {done}"
    assert "== full" in text and "verify OK" in text.split("== full")[1], "F.35: the full CRL does not verify"
    full = text.split("== full")[1].split("== delta")[0]
    m = re.search(r"nextUpdate=(.+)", full)
    assert m, "F.35: the full CRL has no nextUpdate"
    next_update = dt.datetime.strptime(m.group(1).strip().replace("  ", " "), "%b %d %H:%M:%S %Y GMT")
    assert next_update > dt.datetime.utcnow(), f"F.35: the full CRL is stale (nextUpdate {m.group(1)})"
    counts = re.findall(r"^(\d+)$", text, re.M)
    assert counts and int(counts[-1]) >= 1 or (counts and int(counts[0]) >= 1), (
        f"F.35: the revoked serial {serial} is in no published CRL"
    )


# ------------------------------------------------------------------------------------------- F.48
@pytest.mark.check("check:F.48.audit_verify_detects_edit")
def test_audit_verify_detects_edit(host, evidence):
    db = re.search(r'^url\s*=\s*"sqlite:///([^"]+)"', host.file(f"{CA_HOME}/ckms.toml").content_string, re.M)
    if db is None:
        pytest.skip("F.48: the trail is not in SQLite on this host (database copy not possible here)")
    path = db.group(1) if db.group(1).startswith("/") else f"{CA_HOME}/{db.group(1)}"
    scratch = host.run(f"runuser -u {CA_USER} -- mktemp -d /var/tmp/check-f48-XXXXXX").stdout.strip()
    assert scratch, "F.48: no scratch directory"
    try:
        copy = f"{scratch}/trail-copy.sqlite"
        back = as_ckms(
            host,
            f"{CA_VENV}/bin/python -c \"import sqlite3; s=sqlite3.connect('file:{path}?mode=ro', "
            f"uri=True); d=sqlite3.connect('{copy}'); s.backup(d); d.close()\"",
        )
        assert back.rc == 0, f"F.48: could not copy the database: {back.stderr[-300:]}"
        clean = probe(host, "verify-db", copy)
        # edit one record in the middle of the copy, as someone rewriting history in the database would
        seq = max(1, int(clean["last_seq"]) // 2)
        edit = as_ckms(
            host,
            f"{CA_VENV}/bin/python -c \"import sqlite3; d=sqlite3.connect('{copy}'); "
            f"d.execute(\\\"update audit_events set target = target || ' (edited)' where seq = {seq}\\\"); "
            'd.commit()"',
        )
        assert edit.rc == 0, f"F.48: could not edit the copy: {edit.stderr[-300:]}"
        edited = probe(host, "verify-db", copy)
    finally:
        host.run(f"rm -rf {shlex.quote(scratch)}")
    evidence.add("verification of an untouched copy of the live trail", clean)
    evidence.add("record edited in the copy", seq)
    evidence.add("verification of the edited copy", edited)
    evidence.add("scratch copy removed", not host.file(scratch).exists)
    assert clean["ok"], f"F.48: the live trail does not verify: {clean.get('problem')}"
    assert not edited["ok"], "F.48: an edited record went unnoticed by the trail verification"
    assert edited["first_bad_seq"] == seq, (
        f"F.48: verification named record {edited['first_bad_seq']}, not {seq}"
    )


# ------------------------------------------------------------------------------------------- F.56
@pytest.mark.check("check:F.56.tampered_code_blocks_start")
def test_tampered_code_blocks_start(host, evidence):
    pkg = host.run(f"ls -d {SITE}/ckms_app").stdout.strip()
    assert pkg, "F.56: installed ckms_app not found"
    scratch = host.run(f"runuser -u {CA_USER} -- mktemp -d /var/tmp/check-f56-XXXXXX").stdout.strip()
    try:
        cp = host.run(
            f"cd / && runuser -u {CA_USER} -- cp -r {pkg} {scratch}/ckms_app && "
            f"runuser -u {CA_USER} -- find {scratch}/ckms_app -name __pycache__ -prune -exec rm -rf {{}} +"
        )
        assert cp.rc == 0, f"F.56: could not copy the code: {cp.stderr}"
        same = probe(host, "integrity", env={"PYTHONPATH": scratch})
        # one changed byte in the copy of the issuance code, as a modified binary would be
        host.run(
            f"runuser -u {CA_USER} -- sh -c 'echo \"# tampered\" >> {scratch}/ckms_app/authority/issuance.py'"
        )
        tampered = probe(host, "integrity", env={"PYTHONPATH": scratch})
    finally:
        host.run(f"rm -rf {shlex.quote(scratch)}")
    gate = host.run(f"grep -n 'start-up self-test failed' {pkg}/daemon/guard_routes.py").stdout.strip()
    evidence.add("integrity test over an untouched copy", same)
    evidence.add("integrity test over a copy with issuance.py changed", tampered)
    evidence.add("start-up gate in the daemon (enters the error state on a failed self-test)", gate)
    evidence.add("live install", "untouched (copies under /var/tmp, removed)")
    assert same["ok"] and same["code_dir"].startswith(scratch), (
        f"F.56: the untouched copy does not verify: {same}"
    )
    assert tampered["code_dir"].startswith(scratch)
    assert not tampered["ok"] and "code/authority/issuance.py modified" in tampered["detail"], (
        f"F.56: the start-up integrity test did not name the changed file: {tampered}"
    )
    assert gate, "F.56: the daemon's start-up does not gate on the self-test"


# ------------------------------------------------------------------------------------------- F.54
@pytest.mark.check("check:F.54.spare_node_restore")
def test_spare_node_restore(host, evidence):
    newest = host.run("ls -1t /var/backups/ckms/ckms-*.cms 2>/dev/null | head -1").stdout.strip()
    key = policy(host, "backup_recipient_key_src")
    if not newest:
        pytest.fail("F.54: no backup on the host (ansible/backup.yml takes the first one)")
    if not key or not Path(key).is_file():
        pytest.skip("F.54: the backup recipient key is not on this controller (custodians hold it offline)")
    chosen = available(host)[:2]
    if len(chosen) < 2:
        pytest.skip(
            "F.54: two custodians' shares are not on this controller (the key is restored under custody)"
        )
    evidence.add("backup restored", newest)
    with tempfile.TemporaryDirectory(prefix="ckms-f54-") as tmp:
        enc = Path(tmp, "backup.cms")
        enc.write_bytes(host.file(newest).content)
        tar = Path(tmp, "backup.tar")
        # decrypted on the controller: the recipient key never goes to the CA host for a drill
        dec = subprocess.run(
            [
                "openssl",
                "cms",
                "-decrypt",
                "-binary",
                "-inform",
                "DER",
                "-in",
                str(enc),
                "-inkey",
                key,
                "-out",
                str(tar),
            ],
            capture_output=True,
            text=True,
        )
        assert dec.returncode == 0, f"F.54: the backup does not decrypt: {dec.stderr[-300:]}"
        spare = host.run("mktemp -d /var/tmp/ckms-spare-XXXXXX").stdout.strip()
        try:
            up = host.run(f"mkdir -p {spare}/x && chmod 700 {spare}")
            data = tar.read_bytes()
            # copy over SSH in chunks (testinfra has no put): base64 through the shell
            import base64

            b64 = base64.b64encode(data).decode()
            for i in range(0, len(b64), 60000):
                host.run(f"printf %s {b64[i : i + 60000]} >> {spare}/backup.b64")
            steps = host.run(
                f"set -e; cd {spare}; base64 -d backup.b64 > backup.tar; rm backup.b64; tar -C x -xf backup.tar; "
                "rm backup.tar; cd x/ckms; sha256sum --check --quiet --strict MANIFEST.sha256; echo manifest-ok; "
                # the spare's own token directory: the restored token, not the live one
                f"sed -i 's#{CA_HOME}/hsm/tokens#{spare}/x/ckms/hsm/tokens#' hsm/softhsm2.conf; "
                # a routine backup holds no token store (E.11)
                "test ! -e hsm/tokens; echo no-token-store; "
                f"chown -R {CA_USER}: {spare}; echo staged"
            )
            assert up.rc == 0 and steps.rc == 0, f"F.54: staging the restore failed: {steps.stderr[-500:]}"
            # Routine backups carry no token store (E.11): the spare's key comes from a custody-wrapped backup
            # that two custodians (their shares copied from the controller for this check only) make of the
            # live token and restore into the spare's fresh token. The PIN comes from the vault on a real
            # spare; here the CA's PIN file, which the restored configuration names, is only read.
            spare_conf = {"SOFTHSM2_CONF": f"{spare}/x/ckms/hsm/softhsm2.conf"}
            with staged(host, chosen) as cargs:
                wrapped = f"{spare}/ca-key.backup"
                made = as_ckms(
                    host,
                    shlex.join(
                        [f"{CA_VENV}/bin/ckms", "hsm", "backup", "--home", CA_HOME, "--out", wrapped, *cargs]
                    ),
                )
                assert made.rc == 0, (
                    f"F.54: two custodians cannot make a wrapped backup: {made.stderr[-400:]}"
                )
                unwrapped = as_ckms(
                    host,
                    shlex.join(
                        [f"{CA_VENV}/bin/ckms", "hsm", "restore", "--home", f"{spare}/x/ckms", "--in", wrapped,
                         "--token-dir", f"{spare}/x/ckms/hsm/tokens", "--json", *cargs]
                    ),
                    env=spare_conf,
                )  # fmt: skip
            evidence.add(
                "key restored from a custody-wrapped backup (custodians)",
                {
                    "custodians": [c["name"] for c in chosen],
                    "rc": unwrapped.rc,
                    "out": unwrapped.stdout.strip()[-300:],
                },
            )
            assert unwrapped.rc == 0, f"F.54: the wrapped key does not restore: {unwrapped.stderr[-400:]}"
            result = probe(
                host, "spare", f"{spare}/x/ckms", env={"SOFTHSM2_CONF": f"{spare}/x/ckms/hsm/softhsm2.conf"}
            )
            # The restored manifest describes the code installed when the backup was taken: after an upgrade
            # the spare's newer code differs from it, and restore.yml re-records the manifest (as an
            # administrator does after a reviewed upgrade). Accepted only for code and linter files
            # installed after the backup; a differing configuration always fails.
            integrity = next(c for c in result["checks"] if c["name"] == "integrity")
            newer_code_only = False
            if not integrity["ok"]:
                named = [x.strip().rsplit(" ", 1) for x in integrity["detail"].rstrip(" …").split(",")]
                pkg = host.run(f"ls -d {SITE}/ckms_app").stdout.strip()
                paths = [
                    f"{pkg}/{n.split('/', 1)[1]}"
                    if n.startswith("code/")
                    else f"{CA_VENV.rsplit('/', 1)[0]}/bin/ckms-lint"
                    if n == "lint/ckms-lint"
                    else None
                    for n, _ in named
                ]
                backup_at = int(host.run(f"stat -c %Y {newest}").stdout.strip() or 0)
                mtimes = [int(host.run(f"stat -c %Y {p}").stdout.strip() or 0) if p else 0 for p in paths]
                newer_code_only = bool(paths) and all(
                    p and m > backup_at for p, m in zip(paths, mtimes, strict=True)
                )
                evidence.add(
                    "integrity differences vs the installed code",
                    {"detail": integrity["detail"], "installed after the backup": newer_code_only},
                )
            live = host.run(f"openssl x509 -in {active_ca_cert(host)} -noout -fingerprint -sha256").stdout
        finally:
            host.run(f"rm -rf {shlex.quote(spare)}")
        evidence.add("restore staging", steps.stdout.strip())
        evidence.add("self-tests of the restored CA (spare home, restored token)", result["checks"])
        evidence.add("restored trail verification", result["trail"])
        evidence.add("restored CA vs live CA", {"restored": result["ca_sha256"], "live": live.strip()})
        evidence.add("scratch removed", not host.file(spare).exists)
    live_fp = live.strip().split("=", 1)[1].replace(":", "").lower()
    failed = [
        c for c in result["checks"] if not c["ok"] and not (c["name"] == "integrity" and newer_code_only)
    ]
    assert "manifest-ok" in steps.stdout, "F.54: the restored content does not match its manifest"
    assert "no-token-store" in steps.stdout, "F.54: the routine backup contains the token store"
    assert result["ca_sha256"] == live_fp, "F.54: the backup restores a different CA"
    assert not failed, f"F.54: the restored CA fails its self-tests: {failed}"
    assert result["trail"]["ok"], f"F.54: the restored audit trail does not verify: {result['trail']}"


# ------------------------------------------------------------------------------------------- F.55
@pytest.fixture(scope="module")
def committed_tree():
    with exported_commit("ckms-f55-") as exported:
        yield exported


@pytest.mark.check("check:F.55.static_analysis_clean")
def test_static_analysis_clean(host, evidence, committed_tree):
    tree, head = committed_tree
    same = deployed_is(host, tree)
    ruff = local(
        [
            str(Path(sys.executable).with_name("ruff")),
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            "ckms_app",
        ],
        cwd=tree,
    )
    evidence.add("installed code vs the analysed commit", {"commit": head, **same})
    evidence.add(
        "ruff check ckms_app (pyproject rules E,F,W,I,B,UP)",
        f"rc={ruff.returncode} " + (ruff.stdout + ruff.stderr).strip()[-2000:],
    )
    assert ruff.returncode == 0, f"F.55: static analysis finds problems in the CA code: {ruff.stdout[-400:]}"
    assert not same["differ"], f"F.55: the installed code is not the analysed commit {head}: {same['differ']}"


@pytest.mark.check("check:F.55.test_suite_passes")
def test_suite_passes(host, evidence, committed_tree):
    tree, head = committed_tree
    same = deployed_is(host, tree)
    junit = REPO / "build" / "report" / "unit-junit.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    run = run_pytest(tree, ["tests/unit"], junit, timeout=900)
    summary = run["summary"]
    evidence.add(
        "tests/unit of the commit on the controller",
        {
            "commit": head,
            **{k: run[k] for k in ("rc", "summary", "seconds")},
            "junit": str(junit.relative_to(REPO)),
        },
    )
    evidence.add("installed code vs the tested commit", same)
    assert run["rc"] == 0, f"F.55: the unit tests of the CA code fail: {summary} {run['tail']}"
    assert not same["differ"], f"F.55: the installed code is not the tested commit {head}: {same['differ']}"


# ------------------------------------------------------------------------------------ F.06 f / F.08
def _token_module(host) -> str:
    m = re.search(r'^module\s*=\s*"([^"]+)"', host.file(f"{CA_HOME}/ckms.toml").content_string, re.M)
    return m.group(1) if m else ""


def _token(host) -> dict:
    # Wrong-PIN probing can lock a vendor HSM's PIN: only SoftHSM (no retry counter) is probed.
    return probe(host, "token", *(["--probe-defaults"] if "softhsm" in _token_module(host) else []))


def _token_pin_vars(host) -> dict:
    """What the inventory says about the token PINs (the vault too, when make report can decrypt it): the
    user PIN, and the names of any SO PIN variable, of which there must be none (E.22: the SO PIN is drawn
    on the CA host and split among the custodians; no vault holds it)."""
    inv = inventory_vars(host)
    so_vars = sorted(k for k in inv if "so_pin" in k and not k.endswith("_file"))
    return {"user": str(inv.get("vault_hsm_client_user_pin") or ""), "so_vars": so_vars}


@pytest.mark.check("check:F.06.f.no_default_token_pins")
def test_no_default_token_pins(host, evidence):
    t = _token(host)
    pins = _token_pin_vars(host)
    evidence.add(
        "user PIN in use",
        {"length": t["user_pin_length"], "a well-known default": t["user_pin_is_a_default"]},
    )
    evidence.add(
        "default PINs the token accepted", t.get("default_pins_accepted", "not probed (vendor module)")
    )
    evidence.add("token flags", t["flags"])
    evidence.add(
        "inventory PINs (lengths and names only)",
        {"user": len(pins["user"]), "SO PIN variables": pins["so_vars"] or "none"},
    )
    assert not t["user_pin_is_a_default"] and t["user_pin_length"] >= 12, (
        "F.06 f: the token's user PIN is weak"
    )
    assert not {"USER_PIN_TO_BE_CHANGED", "SO_PIN_TO_BE_CHANGED"} & set(t["flags"]), (
        "F.06 f: the token still asks for its initial PIN to be changed"
    )
    accepted = t.get("default_pins_accepted", {})
    assert not t.get("probe_errors"), f"F.06 f: default PINs could not be tried: {t.get('probe_errors')}"
    assert not accepted.get("user") and not accepted.get("so"), (
        f"F.06 f: the token accepts a default PIN: {accepted}"
    )
    if pins["user"]:  # the vault is readable here (make report): the PIN set is not a default either
        assert len(pins["user"]) >= 12, "F.06 f: the vault's user PIN is short"
    assert not pins["so_vars"], f"F.06 f: the inventory carries an SO PIN: {pins['so_vars']}"


@pytest.mark.check("check:F.08.token_requires_user_login")
def test_token_requires_user_login(host, evidence):
    t = _token(host)
    evidence.add("token", {k: t[k] for k in ("module", "label", "flags")})
    evidence.add(
        "objects seen",
        {
            k: t[k]
            for k in (
                "private_keys_visible_without_login",
                "public_keys_visible_without_login",
                "private_keys_after_login",
            )
        },
    )
    assert "LOGIN_REQUIRED" in t["flags"], "F.08: the token does not require a login for cryptographic use"
    assert t["private_keys_visible_without_login"] == 0, "F.08: private keys are visible without a login"
    assert t["private_keys_after_login"] >= 1, "F.08: no private key after the user login (wrong token?)"


@pytest.mark.check("check:F.08.token_so_pin_not_default")
def test_token_so_pin_not_default(host, evidence):
    t = _token(host)
    accepted = t.get("default_pins_accepted")
    so_file = host.run(f"find {CA_HOME} /etc /root -name '*so*pin*' 2>/dev/null").stdout.strip()
    evidence.add(
        "SO login attempts with well-known default PINs",
        {
            "probed": t.get("probed", 0),
            "accepted": (accepted or {}).get("so", "not probed (vendor module)"),
            "errors": t.get("probe_errors", []),
        },
    )
    evidence.add(
        "SO PIN files on the host", so_file or "none (2-of-3 custody: the SO PIN is split among custodians)"
    )
    assert "SO_PIN_LOCKED" not in t["flags"], "F.08: the SO PIN is locked"
    assert "SO_PIN_TO_BE_CHANGED" not in t["flags"], "F.08: the token's SO PIN is still the initial one"
    if accepted is not None:
        assert not t.get("probe_errors"), f"F.08: default SO PINs could not be tried: {t.get('probe_errors')}"
        assert not accepted["so"], "F.08: the token's security officer accepts a default PIN"
    else:
        evidence.limit("vendor PKCS#11 module: default SO PINs are not tried (it could lock the HSM)")
    assert not so_file, f"F.08: an SO PIN is kept on the host: {so_file}"
    # the SO PIN exists only on the token and, split, with the custodians: not in the inventory or vault
    so_vars = _token_pin_vars(host)["so_vars"]
    custody = host.file(f"{CA_HOME}/hsm/custody.json")
    evidence.add("SO PIN variables in the inventory", so_vars or "none")
    evidence.add("custody set on the CA host", custody.exists)
    assert not so_vars, f"F.08: the inventory carries an SO PIN: {so_vars}"
    assert custody.exists, "F.08: no custody set: the SO PIN was never split among custodians"


# ------------------------------------------------------------------------------ F.11 a / F.27: wheels
WHEELHOUSE = "/opt/ckms/wheelhouse"
CA_PIP = "/opt/ckms/venv/bin/pip"


def _pins(host) -> dict[str, tuple[str, str]]:
    """requirements.txt of the host's wheelhouse: name -> (version, sha256)."""
    f = host.file(f"{WHEELHOUSE}/requirements.txt")
    pins = {}
    for m in re.finditer(
        r"^([A-Za-z0-9_.\-]+)==(\S+) --hash=sha256:([0-9a-f]{64})$",
        f.content_string if f.exists else "",
        re.M,
    ):
        pins[m.group(1).lower().replace("-", "_").replace(".", "_")] = (m.group(2), m.group(3))
    return pins


@pytest.mark.check("check:F.11.a.wheelhouse_hashes_verified")
def test_wheelhouse_hashes_verified(host, evidence):
    pins = _pins(host)
    on_host = {}
    for line in host.run(f"cd {WHEELHOUSE} && sha256sum *.whl").stdout.splitlines():
        digest, _, name = line.partition("  ")
        on_host[name.strip()] = digest
    controller = Path(os.environ.get("CKMS_WHEELHOUSE", REPO / "build" / "wheelhouse"))
    built = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in controller.glob("*.whl")}
    installed = dict(
        line.split("==", 1)
        for line in host.run(f"{CA_PIP} list --format=freeze --disable-pip-version-check").stdout.split()
        if "==" in line
    )
    installed = {k.lower().replace("-", "_").replace(".", "_"): v for k, v in installed.items()}
    problems = []
    for wheel, digest in on_host.items():
        name, version = wheel.split("-")[0].lower().replace(".", "_"), wheel.split("-")[1]
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{wheel}: not pinned")
        elif pin != (version, digest):
            problems.append(f"{wheel}: differs from its pin")
        if built and built.get(wheel) not in (None, digest):
            problems.append(f"{wheel}: differs from the controller's build")
    wrong_version = sorted(n for n, (v, _) in pins.items() if n in installed and installed[n] != v)
    evidence.add("pinned wheels (requirements.txt)", len(pins))
    evidence.add("wheels on the host", len(on_host))
    evidence.add("controller wheelhouse compared", str(controller) if built else "not on this controller")
    evidence.add("installed versions that differ from the pins", wrong_version or "none")
    evidence.add("problems", problems or "none")
    assert pins, "F.11 a: no hash-pinned requirements in the wheelhouse (install not hash-verified)"
    assert not problems, f"F.11 a: {problems[:5]}"
    assert not wrong_version, f"F.11 a: installed packages differ from the pinned versions: {wrong_version}"
    assert "ckms" in pins and "ckms" in installed, "F.11 a: ckms itself is not pinned/installed"


@pytest.mark.check("check:F.27.wheelhouse_hash_mismatch_rejected")
def test_wheelhouse_hash_mismatch_rejected(host, evidence):
    pins = _pins(host)
    assert "ckms" in pins, "F.27: no hash pin for ckms in the wheelhouse"
    version, digest = pins["ckms"]
    wheel = host.run(f"ls {WHEELHOUSE}/ckms-{version}-*.whl").stdout.split()
    assert wheel, f"F.27: ckms {version} wheel missing from the wheelhouse"
    scratch = host.run("mktemp -d /var/tmp/check-f27-XXXXXX").stdout.strip()
    try:
        host.run(
            f"cp {wheel[0]} {scratch}/ && echo 'ckms=={version} --hash=sha256:{digest}' > {scratch}/req.txt"
        )
        cmd = (
            f"env PYTHONDONTWRITEBYTECODE=1 {CA_PIP} download --no-cache-dir --no-index --no-deps --require-hashes --disable-pip-version-check "
            f"--find-links {scratch} -d {scratch}/out -r {scratch}/req.txt"
        )
        good = host.run(cmd)
        host.run(f"rm -rf {scratch}/out; printf 'x' >> {scratch}/$(basename {wheel[0]})")
        bad = host.run(cmd)
    finally:
        host.run(f"rm -rf {scratch}")
    evidence.add("pip with the wheel as built", f"rc={good.rc} {good.stdout.strip()[-300:]}")
    evidence.add(
        "pip with one byte appended to a copy of the wheel",
        f"rc={bad.rc} {(bad.stdout + bad.stderr).strip()[-600:]}",
    )
    evidence.add("live wheelhouse", "untouched (copies under /var/tmp, removed)")
    assert good.rc == 0, f"F.27: the untouched wheel is not accepted: {good.stderr.strip()[-300:]}"
    assert bad.rc != 0 and "DO NOT MATCH THE HASHES" in (bad.stdout + bad.stderr), (
        "F.27: a modified wheel was not refused by the hash-pinned install"
    )
