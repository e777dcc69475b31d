"""The public baseline (guidance F.06 l, other secure settings): the CA host against ANSSI BP-028 (high).

Run by ``make baseline`` (``pytest hardening/checks/baseline_check.py``) and, once the catalog names it
under F.06 l, by ``make report``; the report also shows the evaluation as supporting evidence with its
counts and links (hardening.report --openscap). The findings the roles can fix are fixed by os_hardening
(sudo noexec, explicit arguments, a dedicated sudo group, faillock, pam_apparmor, ...).

The evaluation is ``scripts/openscap-eval.sh`` (``make baseline``): the ComplianceAsCode Debian 12 content,
evaluated with ``oscap-chroot`` over a read-only view of the host's root file system, nothing installed on
the host. It takes ~5 s, so for a lab host running on this controller the check runs it itself (fresh
evidence, written where ``make baseline`` writes it); for any other host it reads the summary that
``make baseline`` (or the converge) left in ``build/report[-<stack>]/openscap/``.

The check fails on every rule of the profile whose result is fail, error or unknown and that
``hardening/baseline_exclusions.yml`` does not list as a genuine limit of a container (partitions,
bootloader, kernel security module state); those are recorded as not verifiable here.

The content's two sudoers rules (no root run-as target, explicit command arguments) are regular expressions
that miss most specifications (a principal starting with % or containing -, a tag read as the command), so
the check also parses the host's sudoers files itself and fails on every root, ALL or implicit run-as
target and every command without explicit arguments whose principal ``sudo_accepted`` in the exclusions
file does not list with its reason and compensating control; the accepted ones are shown as limitations.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from ckms_checks import REPO, inventory_vars

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from hardening.baseline_scope import exclusion_for, host_kind  # noqa: E402

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


def _local_lab_root(address: str | None) -> str | None:
    """What ``openscap-eval.sh NAME=...`` evaluates for the running lab host on this controller whose
    management address is ``address`` (the inventory's ansible_host): its root file system, or for a VM
    host ``vm:`` and its state directory (the eval copies the VM's disk and mounts the copy read-only);
    None when no such host runs here. Matched by address, not name: two labs (the suite's and a
    production-shaped one) both have a host named ca1."""
    if os.geteuid() != 0 or not address:
        return None
    try:
        from ckms_lab import hosts
    except ImportError:
        return None
    for h in hosts.list_hosts(None):
        if h["running"] and h["mgmt_address"] == address:
            if h.get("kind") == "vm":
                return f"vm:{h['state_dir']}"
            return str(Path(h["state_dir"]) / "rootfs")
    return None


def _exclusions() -> list[dict[str, str]]:
    doc = yaml.safe_load(EXCLUSIONS.read_text()) or {}
    return list((doc.get("profiles") or {}).get(PROFILE) or [])


def collected_items(arf: Path, objects: list[str]) -> list[str]:
    """The text of every item the OVAL ``objects`` collected in the ARF's system characteristics."""
    refs: list[str] = []
    texts: dict[str, str] = {}
    for _, el in ET.iterparse(arf):
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "object" and el.get("id") in objects:
            refs += [r.get("item_ref", "") for r in el if r.tag.endswith("reference")]
        elif tag.endswith("_item") and el.get("id"):
            text = next((c.text or "" for c in el if c.tag.endswith("}text")), None)
            if text is not None:
                texts[el.get("id", "")] = text
            el.clear()
    return [texts.get(r, f"<item {r} without text>") for r in refs]


def _still_excluded(why: dict[str, Any], arf: Path) -> tuple[bool, list[str]]:
    """Whether an exclusion with ``only_if_items`` holds on this host's evaluation, and the items seen."""
    cond = why.get("only_if_items")
    if not cond:
        return True, []
    items = collected_items(arf, cond["objects"]) if arf.exists() else []
    return bool(items) and all(re.search(cond["match"], t) for t in items), items


def _sudo_accepted() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(EXCLUSIONS.read_text()) or {}
    return {e["principal"]: e for e in doc.get("sudo_accepted") or []}


_SPEC = re.compile(r"^(?P<principal>.+?)\s+(?P<hosts>\S+)\s*=\s*(?P<cmnds>.*)$")
_RUNAS = re.compile(r"^\((?P<runas>[^)]*)\)\s*(?P<rest>.*)$")
_TAGS = re.compile(r"^(?:!?[A-Z_]+:\s*)+")
_NOT_SPECS = ("Defaults", "@include", "#include", "User_Alias", "Runas_Alias", "Host_Alias", "Cmnd_Alias")


def sudo_user_specs(files: dict[str, str]) -> list[dict[str, Any]]:
    """Every (principal, run-as, command) of the sudoers ``files`` ({path: text}), as sudo reads them: a
    run-as list applies to the commands after it until the next one, none means root; tags are dropped."""
    specs: list[dict[str, Any]] = []
    for path, text in files.items():
        for raw in re.sub(r"\\\n", " ", text).splitlines():
            line = re.sub(r"(^|\s)#(?!\d).*$", "", raw).strip()
            m = _SPEC.match(line)
            if not line or line.startswith(_NOT_SPECS) or not m:
                continue
            runas: str | None = None
            for part in re.split(r",(?![^()]*\))", m["cmnds"]):
                item = part.strip()
                r = _RUNAS.match(item)
                if r:
                    runas, item = r["runas"].strip(), r["rest"]
                command = _TAGS.sub("", item).strip()
                if not command:
                    continue
                users = (runas if runas is not None else "root").split(":", 1)[0]
                targets = [u.strip() for u in users.split(",") if u.strip()]
                cmd, _, args = command.partition(" ")
                specs.append(
                    {
                        "file": path,
                        "principal": m["principal"].strip(),
                        "runas": runas if runas is not None else "(implicit: root)",
                        "command": command,
                        "root_target": runas is None or any(t in ("root", "ALL", "#0") for t in targets),
                        "explicit_args": cmd != "ALL" and args.strip() not in ("", "*"),
                    }
                )
    return specs


def sudo_findings(
    specs: list[dict[str, Any]], accepted: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """(findings, accepted deviations in use): root targets and commands without explicit arguments."""
    findings, used = [], set()
    for s in specs:
        ok = accepted.get(s["principal"]) or {}
        where = f"{s['principal']} ({s['runas']}) {s['command']} [{s['file']}]"
        if s["root_target"]:
            if ok.get("root_target"):
                used.add(s["principal"])
            else:
                findings.append(f"root run-as target: {where}")
        if not s["explicit_args"]:
            if any(fnmatch.fnmatchcase(s["command"], pat) for pat in ok.get("any_arguments") or []):
                used.add(s["principal"])
            else:
                findings.append(f"command without explicit arguments: {where}")
    return findings, sorted(used)


def _sudoers_files(host) -> dict[str, str]:
    listing = host.run("ls -1A /etc/sudoers.d 2>/dev/null").stdout.split()
    # sudo skips drop-ins whose name contains a dot or ends in ~ (sudoers(5), @includedir)
    paths = ["/etc/sudoers"] + [
        f"/etc/sudoers.d/{n}" for n in listing if "." not in n and not n.endswith("~")
    ]
    return {p: host.file(p).content_string for p in paths if host.file(p).is_file}


@pytest.mark.check("check:F.06.l.public_baseline_anssi")
def test_public_baseline_anssi(host, evidence):
    hv = inventory_vars(host)
    name = hv.get("inventory_hostname") or host.backend.get_hostname()
    summary_path = _out_dir() / f"{name}-{SHORT}.json"
    rootfs = _local_lab_root(hv.get("ansible_host"))
    if rootfs is not None:
        run = subprocess.run(
            [str(REPO / "scripts" / "openscap-eval.sh"), f"{name}={rootfs}"],
            capture_output=True,
            text=True,
            # ~5 s for a container's tree; a VM's disk is first copied by its QEMU (~1 min under TCG)
            timeout=900 if rootfs.startswith("vm:") else 240,
            env={**os.environ, "OPENSCAP_PROFILES": PROFILE, "OPENSCAP_OUT": str(summary_path.parent)},
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
            **{
                k: summary.get(k)
                for k in ("host", "profile", "content", "oscap_version", "start_time", "duration_s")
            },
            "host_kind": host_kind(summary),
        },
    )
    evaluated = counts.get("pass", 0) + sum(counts.get(r, 0) for r in FAILING)
    assert evaluated >= MIN_EVALUATED, (
        f"F.06 l: only {evaluated} rules of {len(rules)} were evaluated on {name}: the evaluation saw nothing"
    )

    kind = host_kind(summary)
    exclusions = [e for e in _exclusions() if not e.get("hosts") or kind in e["hosts"]]
    arf = summary_path.with_name(f"{name}-{SHORT}.arf.xml")
    failing, excluded = [], []
    for r in rules:
        if r["result"] not in FAILING:
            continue
        why = exclusion_for(r["id"], exclusions, kind)
        if why and why.get("only_if_items"):
            holds, items = _still_excluded(why, arf)
            evidence.add(
                f"{r['id']}: lines found (excluded only if all match {why['only_if_items']['match']})", items
            )
            why = why if holds else None
        row = {"rule": r["id"], "result": r["result"], "severity": r["severity"], "title": r["title"]}
        if why:
            excluded.append({**row, "excluded_as": why["kind"], "verified_by": why.get("verified_by", "")})
        else:
            failing.append(row)
    notchecked = [r["id"] for r in rules if r["result"] == "notchecked"]
    unused = [
        e["rule"] for e in exclusions if not any(fnmatch.fnmatchcase(x["rule"], e["rule"]) for x in excluded)
    ]

    evidence.add(
        "counts",
        {**counts, "excluded": len(excluded), "failing (not excluded)": len(failing), "selected": len(rules)},
    )
    evidence.add("failing rules (not excluded)", failing)
    evidence.add(
        "excluded rules (container limits, tool defects)",
        [f"{x['rule']} ({x['result']}, {x['excluded_as']})" for x in excluded],
    )
    if unused:
        evidence.add("exclusions that matched nothing (remove them)", unused)
    by_kind = {
        k: [x["rule"] for x in excluded if x["excluded_as"] == k]
        for k in {x["excluded_as"] for x in excluded}
    }
    if by_kind.get("container"):
        evidence.limit(
            f"{len(by_kind['container'])} rule(s) a lab container cannot show (partitions, bootloader, kernel "
            "AppArmor state; hardening/baseline_exclusions.yml)"
        )
    if by_kind.get("deviation"):
        evidence.limit(
            f"deliberate deviation(s) from the profile, each with its reason and compensating control in "
            f"hardening/baseline_exclusions.yml: {', '.join(by_kind['deviation'])}"
        )
    for kind in sorted(set(by_kind) - {"container", "deviation"}):
        evidence.limit(
            f"rule(s) the evaluation could not observe ({kind}), each verified by another check: "
            + "; ".join(
                f"{x['rule']} -> {x['verified_by'] or 'see hardening/baseline_exclusions.yml'}"
                for x in excluded
                if x["excluded_as"] == kind
            )
        )
    if notchecked:
        evidence.limit(
            f"rules without an automated check in the content (notchecked): {', '.join(notchecked)}"
        )

    # the intent of sudoers_no_root_target / sudoers_explicit_command_args, which the content's regexes miss
    accepted = _sudo_accepted()
    specs = sudo_user_specs(_sudoers_files(host))
    sudo_problems, used = sudo_findings(specs, accepted)
    evidence.add(
        "sudo user specifications (parsed here)",
        [
            f"{x['principal']} ({x['runas']}) {x['command']}"
            + (" [root target]" if x["root_target"] else "")
            + ("" if x["explicit_args"] else " [any arguments]")
            for x in specs
        ],
    )
    evidence.add("sudo findings (not accepted)", sudo_problems)
    assert len(specs) > 0, f"F.06 l: no sudo user specification read on {name}: the sudoers parse saw nothing"
    for principal in used:
        a = accepted[principal]
        evidence.limit(
            f"sudo for {principal} keeps a root target or any arguments on purpose: {' '.join(a['reason'].split())} "
            f"Bounded by: {' '.join(a['compensating'].split())}"
        )
    assert not failing, f"F.06 l: {len(failing)} ANSSI BP-028 high rule(s) fail on {name}: " + ", ".join(
        f"{x['rule']} ({x['severity']})" for x in failing
    )
    assert not sudo_problems, f"F.06 l: sudo specifications against the baseline's intent on {name}: " + (
        "; ".join(sudo_problems)
    )
