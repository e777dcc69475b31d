"""Shared helpers of the lab drills (tests/lab/drills/*.py): hosts from an Ansible inventory, SSH,
waiting with timings, and check records for the hardening report.

A drill is a script a person runs against a lab whose hosts were converged with ansible/site.yml
(or a Molecule drill topology)::

    python tests/lab/drills/flows.py --inventory inventories/lab/generated/hosts.yml

Each drill appends its results to ``build/report/drills.json`` (``--results``): one record per check,
the same shape as hardening/checks/conftest.py writes (check, test, host, outcome, duration_s, message,
evidence, at), so ``python -m hardening.report --results … --results build/report/drills.json`` shows
them under their items. Records of the same check and host replace older ones.

Traffic stays inside the lab: every probe runs on a lab host against another lab host's address.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DEFAULT_INVENTORY = REPO / "inventories" / "lab" / "generated" / "hosts.yml"
DEFAULT_RESULTS = REPO / "build" / "report" / "drills.json"
# The drills enrol as a named person (ckms-enroll refuses root without one): the lab's operator-1.
DRILL_OPERATOR = os.environ.get("CKMS_DRILL_OPERATOR", "operator-1")


class DrillSkip(Exception):
    """The drill cannot run against this lab (the reason says what is missing)."""


@dataclass
class Host:
    name: str
    address: str
    vars: dict[str, Any]
    ssh_args: list[str]

    def addr(self, segment: str) -> str:
        return self.vars["ckms_addresses"][segment]

    def argv(self, command: str) -> list[str]:
        """ssh argv running ``command`` as root on the host: as the inventory's user, through ``sudo -n``
        when the inventory says become (the automation account; nobody logs in as root)."""
        user = self.vars.get("ansible_user", "root")
        if user != "root" and self.vars.get("ansible_become"):
            command = f"sudo -n sh -c {shlex.quote(command)}"
        return ["ssh", *self.ssh_args, f"{user}@{self.address}", command]

    def run(self, command: str, *, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.name}: {command!r} -> rc {proc.returncode}: {proc.stderr.strip()[:400]}"
            )
        return proc

    def ok(self, command: str, timeout: float = 120) -> bool:
        return self.run(command, timeout=timeout).returncode == 0

    def out(self, command: str, timeout: float = 120) -> str:
        return self.run(command, timeout=timeout).stdout.strip()


class Lab:
    """The hosts of an Ansible inventory, by group."""

    def __init__(self, inventory: Path) -> None:
        self.inventory = inventory
        ansible_inventory = Path(sys.executable).parent / "ansible-inventory"
        exe = str(ansible_inventory) if ansible_inventory.exists() else "ansible-inventory"
        data = json.loads(
            subprocess.run(
                [exe, "-i", str(inventory), "--list"], capture_output=True, text=True, check=True
            ).stdout
        )
        self.hostvars: dict[str, dict] = data["_meta"]["hostvars"]
        self.groups = {g: v.get("hosts", []) for g, v in data.items() if isinstance(v, dict) and "hosts" in v}

    def host(self, group: str) -> Host:
        names = self.groups.get(group) or ([group] if group in self.hostvars else [])
        if not names:
            raise DrillSkip(f"no host in group {group!r} of {self.inventory}")
        name = names[0]
        v = self.hostvars[name]
        args = [
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        key = v.get("ansible_ssh_private_key_file") or v.get("ansible_private_key_file")
        if key:
            args += ["-i", str(key)]
        common = v.get("ansible_ssh_common_args")
        if common:
            args += shlex.split(common)
        else:  # Molecule instances: fresh host keys per run
            args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if v.get("ansible_port"):
            args += ["-p", str(v["ansible_port"])]
        return Host(name, v.get("ansible_host", name), v, args)

    def has(self, group: str) -> bool:
        return bool(self.groups.get(group))


def wait(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> float | None:
    """Seconds until ``predicate`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return round(time.monotonic() - t0, 2)
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def ca_daemon_deployed(ca: Host) -> bool:
    return ca.ok("systemctl cat ckms-ca.service >/dev/null 2>&1 && test -x /opt/ckms/venv/bin/ckms")


def ca_health(ca: Host) -> dict | None:
    """The daemon's /health (CRL listener, plain HTTP on the CA itself)."""
    out = ca.run(f"curl -s --max-time 5 http://{ca.addr('ca')}:8080/health")
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def enrol(terminal: Host, tag: str) -> tuple[bool, float, str]:
    """One EST issuance from the terminal (ckms_ca's enrolment script); (ok, seconds, output)."""
    t0 = time.monotonic()
    p = terminal.run(
        f"/usr/local/bin/ckms-enroll --as {DRILL_OPERATOR} drill-{tag}-{int(time.time())} /root/ckms-drill",
        timeout=60,
    )
    return p.returncode == 0, round(time.monotonic() - t0, 2), (p.stdout + p.stderr).strip()[-400:]


@dataclass
class Drill:
    """Collects one drill's check records; ``record`` as conftest.py does for the hardening checks."""

    name: str
    results: Path
    records: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def record(
        self,
        check: str,
        host: str,
        ok: bool | None,
        message: str | None,
        evidence: dict[str, Any],
        duration: float | None = None,
    ) -> dict:
        rec = {
            "check": check,
            "test": f"tests/lab/drills/{self.name}.py",
            "host": host,
            "outcome": "skipped" if ok is None else ("passed" if ok else "failed"),
            "duration_s": round(duration if duration is not None else time.monotonic() - self.started, 3),
            "message": message,
            "evidence": [
                {
                    "label": k,
                    "value": v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)[:4000],
                }
                for k, v in evidence.items()
            ],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": os.environ.get("CKMS_RUN_ID") or None,  # the report's run (hardening/provenance.py)
        }
        self.records.append(rec)
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[rec["outcome"]]
        print(
            f"[{mark}] {check} @ {host} ({rec['duration_s']} s){': ' + message if message else ''}",
            flush=True,
        )
        return rec

    def save(self) -> None:
        self.results.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.results.read_text()) if self.results.exists() else []
        keys = {(r["check"], r["host"]) for r in self.records}
        merged = [r for r in old if (r["check"], r["host"]) not in keys] + self.records
        self.results.write_text(json.dumps(merged, indent=1))

    @property
    def ok(self) -> bool:
        return all(r["outcome"] != "failed" for r in self.records)


def main(
    name: str,
    doc: str,
    body: Callable[[Lab, Drill, argparse.Namespace], None],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    p = argparse.ArgumentParser(prog=f"tests/lab/drills/{name}.py", description=doc.strip().splitlines()[0])
    p.add_argument(
        "--inventory", type=Path, default=Path(os.environ.get("CKMS_DRILL_INVENTORY", DEFAULT_INVENTORY))
    )
    p.add_argument(
        "--results", type=Path, default=Path(os.environ.get("CKMS_DRILL_RESULTS", DEFAULT_RESULTS))
    )
    if extra:
        extra(p)
    args = p.parse_args()
    # A converged lab's inventory holds the Ansible-Vault-encrypted token PINs (group_vars/ca/vault.yml):
    # ansible-inventory, the re-converge and the checks need the per-machine vault password, as make report.
    vault = (
        Path(os.environ.get("CKMS_TOOL_CACHE", Path.home() / ".cache" / "ckms")) / "ansible" / "vault-pass"
    )
    if vault.is_file() and vault.stat().st_size:
        os.environ.setdefault("ANSIBLE_VAULT_PASSWORD_FILE", str(vault))
    # the checks a drill runs (testinfra's ansible backend) call ansible-inventory: the venv's, first
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    drill = Drill(name, args.results)
    try:
        body(Lab(args.inventory), drill, args)
    except DrillSkip as exc:
        print(f"[SKIP] drill {name}: {exc}")
        if not drill.records:
            drill.save()
            return 0
    finally:
        drill.save()
    print(
        f"drill {name}: {'passed' if drill.ok else 'FAILED'} in {time.monotonic() - drill.started:.1f} s "
        f"({len(drill.records)} checks) -> {args.results}"
    )
    return 0 if drill.ok else 1
