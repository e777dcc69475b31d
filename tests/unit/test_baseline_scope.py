"""Public-baseline exclusions are scoped to the kind of host evaluated (hardening/baseline_scope.py).

Why: the container exclusions (no partitions, bootloader or kernel of its own) would hide real findings
on the VM CA host or a server, where those rules can and must pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hardening import report
from hardening.baseline_scope import exclusion_for, host_kind

PROFILE = "xccdf_org.ssgproject.content_profile_anssi_bp28_high"
LISTED = (yaml.safe_load(report.BASELINE_EXCLUSIONS.read_text())["profiles"])[PROFILE]


def test_container_limits_apply_only_to_containers() -> None:
    rule = "partition_for_var_log_audit"
    assert exclusion_for(rule, LISTED, "container") is not None
    assert exclusion_for(rule, LISTED, "vm") is None
    assert exclusion_for(rule, LISTED, "server") is None
    # every exclusion of kind container says so in hosts:, so none can leak onto a VM or a server
    assert all(e.get("hosts") == ["container"] for e in LISTED if e["kind"] == "container")


def test_an_unscoped_exclusion_applies_everywhere() -> None:
    listed = [{"rule": "some_tool_rule_*", "kind": "tool"}]
    assert all(exclusion_for("some_tool_rule_x", listed, k) for k in ("container", "vm", "server"))
    assert exclusion_for("other_rule", listed, "vm") is None


def test_summary_without_kind_is_a_server() -> None:
    assert host_kind({"host_kind": "vm"}) == "vm"
    assert host_kind({}) == "server"
    assert host_kind({"host_kind": "something-else"}) == "server"


def test_report_keeps_container_exclusions_open_on_a_vm(tmp_path: Path) -> None:
    rules = [
        {"id": "partition_for_home", "result": "fail", "severity": "low", "title": "t"},
        {"id": "sshd_disable_root_login", "result": "pass", "severity": "high", "title": "t"},
    ]
    for name, kind in (("ca1", "container"), ("ca2", "vm")):
        doc = {
            "host": name,
            "host_kind": kind,
            "profile": PROFILE,
            "counts": {"fail": 1, "pass": 1},
            "rules": rules,
        }
        (tmp_path / f"{name}-anssi_bp28_high.json").write_text(json.dumps(doc))
    runs = {r["host"]: r for r in report.load_openscap(tmp_path)}
    assert runs["ca1"]["excluded"] == ["partition_for_home (container)"] and runs["ca1"]["open"] == []
    assert runs["ca2"]["excluded"] == [] and runs["ca2"]["open"] == ["partition_for_home"]
    assert runs["ca2"]["host_kind"] == "vm"


def test_every_exclusion_says_why_and_what_covers_it() -> None:
    """A deviation names its compensating control, a tool limit the check that observes the rule instead,
    and every check an exclusion cites exists (a renamed check would leave the reviewer a dead end)."""
    import re

    from hardening.coverage import implemented_checks

    checks = implemented_checks()
    for e in LISTED:
        assert e["kind"] in ("container", "tool", "deviation"), e
        assert str(e.get("reason", "")).strip(), e
        assert set(e.get("hosts") or []) <= {"container", "vm", "server"}, e
        if e["kind"] == "deviation":
            assert str(e.get("compensating", "")).strip(), e
        if e["kind"] == "tool":
            assert str(e.get("verified_by", "")).strip(), e
        cited = re.findall(
            r"check:[A-Z]\.[0-9]+[.\w]*[a-z_]", f"{e.get('compensating', '')} {e.get('verified_by', '')}"
        )
        assert all(c in checks for c in cited), [c for c in cited if c not in checks]
