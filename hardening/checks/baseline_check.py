"""The public baseline (guidance F.06 l, other secure settings): the CA host against ANSSI BP-028 (high).

Run by ``make baseline`` (``pytest hardening/checks/baseline_check.py``), not yet by ``make report``: the
catalog names this check once the remaining findings (sudo NOEXEC, explicit sudo command arguments,
root run-as targets, a dedicated sudo group, faillock, pam_apparmor) are closed; until then the report
shows the evaluation as supporting evidence with its counts and links (hardening.report --openscap).

The evaluation is ``scripts/openscap-eval.sh`` (``make baseline``): the ComplianceAsCode Debian 12 content,
evaluated with ``oscap-chroot`` over a read-only view of the host's root file system, nothing installed on
the host. It takes ~5 s, so for a lab host running on this controller the check runs it itself (fresh
evidence, written where ``make baseline`` writes it); for any other host it reads the summary that
``make baseline`` (or the converge) left in ``build/report[-<stack>]/openscap/``.

The check fails on every rule of the profile whose result is fail, error or unknown and that
``hardening/baseline_exclusions.yml`` does not list as a genuine limit of a container (partitions,
bootloader, kernel security module state); those are recorded as not verifiable here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ckms_checks import REPO, inventory_vars

testinfra_hosts = ["ansible://ca"]

PROFILE = "xccdf_org.ssgproject.content_profile_anssi_bp28_high"
SHORT = PROFILE.removeprefix("xccdf_org.ssgproject.content_profile_")
EXCLUSIONS = REPO / "hardening" / "baseline_exclusions.yml"
FAILING = {"fail", "error", "unknown"}
# A real evaluation of a Debian 12 host selects ~390 rules and passes dozens: fewer means it saw nothing.
MIN_EVALUATED = 50


def _stack() -> str:
    return os.environ.get("CKMS_LAB_STACK") or "lab"


def _out_dir() -> Path:
    explicit = os.environ.get("OPENSCAP_OUT")
    if explicit:
        return Path(explicit)
    stack = _stack()
    return REPO / "build" / ("report" if stack == "lab" else f"report-{stack}") / "openscap"


def _local_lab_host(name: str) -> bool:
    """Whether ``name`` is a running host of a lab on this controller (then it can be evaluated here)."""
    if os.geteuid() != 0:
        return False
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from ckms_lab import hosts
    except ImportError:
        return False
    return any(h["name"] == name and h["running"] for h in hosts.list_hosts(None))


def _exclusions() -> list[dict[str, str]]:
    doc = yaml.safe_load(EXCLUSIONS.read_text()) or {}
    return list((doc.get("profiles") or {}).get(PROFILE) or [])


def _excluded_by(rule: str, exclusions: list[dict[str, str]]) -> dict[str, str] | None:
    return next((e for e in exclusions if fnmatch.fnmatchcase(rule, e["rule"])), None)


@pytest.mark.check("check:F.06.l.public_baseline_anssi")
def test_public_baseline_anssi(host, evidence):
    name = inventory_vars(host).get("inventory_hostname") or host.backend.get_hostname()
    summary_path = _out_dir() / f"{name}-{SHORT}.json"
    if _local_lab_host(name):
        run = subprocess.run(
            [str(REPO / "scripts" / "openscap-eval.sh"), name],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "OPENSCAP_PROFILES": PROFILE, "CKMS_LAB_STACK": _stack()},
        )
        evidence.add("evaluation", (run.stderr.strip() or run.stdout.strip())[-1500:])
        assert run.returncode == 0, f"F.06 l: the OpenSCAP evaluation of {name} failed (rc={run.returncode})"
    else:
        evidence.add("evaluation", f"read from {summary_path} (host not running on this controller)")
    assert summary_path.exists(), (
        f"F.06 l: no OpenSCAP summary for {name} at {summary_path}: run make baseline against this host"
    )
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    assert summary.get("profile") == PROFILE, f"F.06 l: summary is for profile {summary.get('profile')}"
    rules: list[dict[str, Any]] = summary["rules"]
    counts = summary["counts"]
    evidence.add(
        "evaluation of",
        {
            k: summary.get(k)
            for k in ("host", "profile", "content", "oscap_version", "start_time", "duration_s")
        },
    )
    evaluated = counts.get("pass", 0) + sum(counts.get(r, 0) for r in FAILING)
    assert evaluated >= MIN_EVALUATED, (
        f"F.06 l: only {evaluated} rules of {len(rules)} were evaluated on {name}: the evaluation saw nothing"
    )

    exclusions = _exclusions()
    failing, excluded = [], []
    for r in rules:
        if r["result"] not in FAILING:
            continue
        why = _excluded_by(r["id"], exclusions)
        row = {"rule": r["id"], "result": r["result"], "severity": r["severity"], "title": r["title"]}
        (excluded if why else failing).append({**row, "excluded_as": why["kind"]} if why else row)
    notchecked = [r["id"] for r in rules if r["result"] == "notchecked"]
    unused = [
        e["rule"] for e in exclusions if not any(fnmatch.fnmatchcase(x["rule"], e["rule"]) for x in excluded)
    ]

    evidence.add(
        "counts",
        {**counts, "excluded": len(excluded), "failing (not excluded)": len(failing), "selected": len(rules)},
    )
    evidence.add("failing rules (not excluded)", failing)
    evidence.add("excluded rules (container limits)", [f"{x['rule']} ({x['result']})" for x in excluded])
    if unused:
        evidence.add("exclusions that matched nothing (remove them)", unused)
    if excluded:
        kinds = sorted({x["excluded_as"] for x in excluded})
        evidence.limit(
            f"{len(excluded)} rule(s) a lab container cannot show ({', '.join(kinds)}: partitions, bootloader, "
            "kernel AppArmor state; hardening/baseline_exclusions.yml)"
        )
    if notchecked:
        evidence.limit(
            f"rules without an automated check in the content (notchecked): {', '.join(notchecked)}"
        )
    assert not failing, f"F.06 l: {len(failing)} ANSSI BP-028 high rule(s) fail on {name}: " + ", ".join(
        f"{x['rule']} ({x['severity']})" for x in failing
    )
