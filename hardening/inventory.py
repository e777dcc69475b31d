"""The system inventory (A.32, A.51, A.55, F.21, F.32): what runs where, collected from the live hosts.

Why: the guidance wants a list of the major devices -- CA server, HSM, router, CA software -- with maker,
model and version, kept current as versions change. Written by hand it drifts; here every converge's
report collects it from the hosts themselves over the same SSH access the checks use:

* every host: OS release, kernel, architecture, virtualisation, the boot facts a host can see (UEFI,
  Secure Boot, TPM), the Debian package list (count and digest; the full list stays on the host in the
  integrity role's configuration inventory, F.21 b);
* the CA host: the HSM's PKCS#11 module (path and digest), the token's manufacturer, model, serial,
  hardware and firmware versions (``pkcs11-tool -L``), the CMVP certificate number the inventory
  declares (``ckms_hsm_cmvp_certificate``; F.32), and the CA daemon's version and code digest;
* the router: the digest of its loaded nftables rule set.

Each collection is kept (``<out>/history/<UTC time>.json``) and compared with the previous one, so the
report shows what changed since the last converge.

    python -m hardening.inventory --inventory inventories/lab/generated/hosts.yml --out build/report/inventory
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Run on each host as root (become), standard library only: prints one JSON document of facts.
_FACTS = r"""
import hashlib, json, os, platform, re, shutil, subprocess

def run(*argv, env=None):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        return p.stdout if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None

def digest(data):
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()

facts = {}
osr = {}
if os.path.exists("/etc/os-release"):
    for line in open("/etc/os-release"):
        k, _, v = line.strip().partition("=")
        osr[k] = v.strip('"')
facts["os"] = {"name": osr.get("PRETTY_NAME"), "version_id": osr.get("VERSION_ID"),
               "kernel": platform.release(), "arch": platform.machine()}
virt = run("systemd-detect-virt")
facts["virtualisation"] = (virt or "none").strip()
efi = os.path.isdir("/sys/firmware/efi")
sb = None
if efi:
    for name in os.listdir("/sys/firmware/efi/efivars") if os.path.isdir("/sys/firmware/efi/efivars") else []:
        if name.startswith("SecureBoot-"):
            raw = open(os.path.join("/sys/firmware/efi/efivars", name), "rb").read()
            sb = bool(raw[-1]) if raw else None
facts["boot"] = {"uefi": efi, "secure_boot": sb, "tpm": os.path.isdir("/sys/class/tpm") and bool(os.listdir("/sys/class/tpm"))}
pkgs = run("dpkg-query", "-W", "-f", "${Package}\t${Version}\n") or ""
facts["packages"] = {"count": len(pkgs.splitlines()), "digest": digest(pkgs)}
toml = "/var/lib/ckms/ckms.toml"
if os.path.exists(toml):
    text = open(toml).read()
    hsm = re.search(r"^\[hsm\](.*?)(?=^\[|\Z)", text, re.S | re.M)
    section = hsm.group(1) if hsm else ""
    module = re.search(r'^module\s*=\s*"([^"]+)"', section, re.M)
    label = re.search(r'^token_label\s*=\s*"([^"]+)"', section, re.M)
    ca = {"module": module.group(1) if module else None, "token_label": label.group(1) if label else None}
    if ca["module"] and os.path.exists(ca["module"]):
        ca["module_digest"] = digest(open(ca["module"], "rb").read())
        env = dict(os.environ, SOFTHSM2_CONF="/var/lib/ckms/hsm/softhsm2.conf")
        listing = run("pkcs11-tool", "--module", ca["module"], "-L", env=env) or ""
        tokens, cur = [], None
        for line in listing.splitlines():
            m = re.match(r"^Slot \d+", line)
            if m:
                cur = {}
                tokens.append(cur)
                continue
            k, sep, v = line.strip().partition(":")
            if cur is not None and sep:
                cur[k.strip()] = v.strip()
        want = [t for t in tokens if t.get("token label") == ca["token_label"]]
        t = want[0] if want else {}
        ca["token"] = {k: t.get(k) for k in ("token label", "token manufacturer", "token model", "serial num",
                                              "hardware version", "firmware version")}
    venv = "/opt/ckms/venv"
    version = run(venv + "/bin/python", "-c", "import importlib.metadata as m; print(m.version('ckms'))")
    ca["daemon_version"] = ("ckms " + version.strip()) if version else None
    pkg = [p for p in (venv + "/lib/" + d + "/site-packages/ckms_app" for d in os.listdir(venv + "/lib")) if os.path.isdir(p)] if os.path.isdir(venv + "/lib") else []
    if pkg:
        h = hashlib.sha256()
        for root, _dirs, files in sorted(os.walk(pkg[0])):
            for f in sorted(files):
                if f.endswith(".py"):
                    p = os.path.join(root, f)
                    h.update(os.path.relpath(p, pkg[0]).encode() + b"\0" + open(p, "rb").read())
        ca["daemon_code_digest"] = "sha256:" + h.hexdigest()
    facts["ca"] = ca
if shutil.which("nft"):
    rules = run("nft", "-s", "-t", "list", "ruleset")  # stateless, terse: no counters, no set elements
    if rules is not None:
        facts["firewall"] = {"ruleset_digest": digest(rules), "lines": len(rules.splitlines())}
print(json.dumps(facts, sort_keys=True))
"""

#: Inventory variables copied into a host's record when set (declared, not observable: F.32, A.51).
DECLARED = ("ckms_hsm_cmvp_certificate", "ckms_hsm_vendor", "ckms_hsm_model", "ckms_device_model")


def host_facts(host: Any) -> dict[str, Any]:
    """The facts of one testinfra host (ansible backend, become), as :data:`_FACTS` prints them."""
    code = base64.b64encode(_FACTS.encode()).decode()
    out = host.run(f'python3 -c "$(echo {code} | base64 -d)"')
    if out.rc != 0:
        raise RuntimeError(f"inventory facts failed (rc={out.rc}): {out.stderr.strip()[-500:]}")
    facts: dict[str, Any] = json.loads(out.stdout)
    try:
        variables = host.ansible.get_variables()
    except Exception:  # noqa: BLE001 - not an ansible backend: nothing declared
        variables = {}
    facts["groups"] = sorted(g for g in variables.get("group_names", []) if g != "ungrouped")
    declared = {k: variables[k] for k in DECLARED if k in variables}
    if declared:
        facts["declared"] = declared
    return facts


def collect(inventory: Path) -> dict[str, Any]:
    """Every host of the Ansible inventory: ``{"collected_at": ..., "hosts": {name: facts}}``."""
    import testinfra
    from testinfra.utils.ansible_runner import AnsibleRunner

    hosts: dict[str, Any] = {}
    for name in sorted(AnsibleRunner(str(inventory)).get_hosts("all")):
        host = testinfra.get_host(f"ansible://{name}", ansible_inventory=str(inventory))
        try:
            hosts[name] = host_facts(host)
        except Exception as exc:  # noqa: BLE001 - one unreachable host is recorded, not fatal
            hosts[name] = {"error": str(exc)[:500]}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_id = os.environ.get("CKMS_RUN_ID") or None  # the report's run (hardening/provenance.py)
    return {"collected_at": now, "run_id": run_id, "inventory": str(inventory), "hosts": hosts}


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def diff(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What changed between two collections, one line per host and fact (empty: nothing, or no previous)."""
    if previous is None:
        return []
    before = _flatten(previous.get("hosts", {}))
    after = _flatten(current.get("hosts", {}))
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key, 'absent')} -> {after.get(key, 'absent')}")
    return lines


def record(current: dict[str, Any], out: Path) -> dict[str, Any]:
    """Keep ``current`` in ``out/history`` and write ``out/inventory.json`` with the changes since the last."""
    history = out / "history"
    history.mkdir(parents=True, exist_ok=True)
    earlier = sorted(history.glob("*.json"))
    previous = json.loads(earlier[-1].read_text()) if earlier else None
    current = dict(current)
    current["previous_at"] = previous.get("collected_at") if previous else None
    current["changes"] = diff(previous, current)
    stamp = current["collected_at"].replace(":", "")
    (history / f"{stamp}.json").write_text(
        json.dumps({k: current[k] for k in ("collected_at", "inventory", "hosts")}, indent=1, sort_keys=True)
    )
    (out / "inventory.json").write_text(json.dumps(current, indent=1, sort_keys=True))
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardening.inventory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inventory", type=Path, required=True, help="Ansible inventory of the hosts")
    parser.add_argument("--out", type=Path, required=True, help="directory for inventory.json and history/")
    args = parser.parse_args(argv)
    doc = record(collect(args.inventory), args.out)
    failed = [n for n, h in doc["hosts"].items() if "error" in h]
    print(
        f"inventory: {len(doc['hosts'])} hosts, {len(doc['changes'])} change(s) since "
        f"{doc['previous_at'] or 'no previous collection'}" + (f"; unreachable: {failed}" if failed else "")
    )
    for line in doc["changes"][:40]:
        print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
