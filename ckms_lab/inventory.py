"""Render a stack's outputs into an Ansible inventory (``inventories/<stack>/generated/``).

Why generated: addresses, host keys and the flow model come from the stack, so the inventory can
never drift from what was built. Hosts are reached over the management network with the per-machine
controller key, as the automation account (``ckms-automation``, made by ckms_lab.hosts as cloud-init would;
os_hardening binds it to the controller's address and logs its sudo) with sudo to root: nobody logs in as
root. Their SSH host keys are pinned in a generated ``known_hosts`` (no
``StrictHostKeyChecking=no``). The flow list becomes group vars (``ckms_flows``) for the router,
host-firewall and IDS roles.

Usage: ``python -m ckms_lab.inventory OUTPUTS.json DIR`` (OUTPUTS from ``pulumi stack output --json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ckms_lab import hosts as hosts_mod
from ckms_lab import paths


class InventoryError(ValueError):
    """The stack outputs do not describe an environment."""


def render(
    outputs: dict[str, Any],
    directory: Path,
    *,
    ssh_key: Path | None = None,
    ssh_public_key: str | None = None,
) -> Path:
    """Write ``hosts.yml`` and ``known_hosts`` into ``directory``; returns the hosts file.

    ``ssh_key``/``ssh_public_key``: the controller's key pair (default: the per-machine lab key)."""
    for key in ("hosts", "flows", "segments"):
        if key not in outputs:
            raise InventoryError(f"stack outputs lack {key!r}: was the stack deployed?")
    directory.mkdir(parents=True, exist_ok=True)
    key = ssh_key or paths.ssh_key()
    public_key = ssh_public_key or (
        key.with_suffix(".pub").read_text().strip() if ssh_key else paths.ssh_public_key()
    )
    known_hosts = directory / "known_hosts"
    hosts: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    pins = []
    for name, h in sorted(outputs["hosts"].items()):
        hosts[name] = {
            "ansible_host": h["mgmt_address"],
            "ckms_role": h["role"],
            "ckms_addresses": h["addresses"],
        }
        if h.get("netns"):
            hosts[name]["ckms_netns"] = h["netns"]
        if h.get("kind"):
            hosts[name]["ckms_lab_host_kind"] = h["kind"]  # container or vm (make lab LAB_CA=vm)
        groups.setdefault(h["role"], {"hosts": {}})["hosts"][name] = None
        if h.get("host_key"):
            pins.append(f"{h['mgmt_address']} {h['host_key']}")
    known_hosts.write_text("\n".join(pins) + ("\n" if pins else ""))
    inventory = {
        "all": {
            "hosts": hosts,
            "children": groups,
            "vars": {
                "ansible_user": hosts_mod.AUTOMATION_USER,
                "ansible_become": True,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={known_hosts.resolve()} -o StrictHostKeyChecking=yes"
                    " -o IdentitiesOnly=yes"
                ),
                "ckms_environment": outputs.get("kind", ""),
                "ckms_controller_address": outputs.get("controller_address", ""),
                "ckms_time_sources": outputs.get("time_sources", []),
                "ckms_segments": outputs["segments"],
                "ckms_flows": outputs["flows"],
                # os_hardening's automation account: the controller's key (from= its address by default)
                "os_hardening_automation_user": hosts_mod.AUTOMATION_USER,
                "os_hardening_automation_authorized_keys": [public_key],
            },
        }
    }
    out = directory / "hosts.yml"
    out.write_text(
        "# Generated from the Pulumi stack outputs by ckms_lab.inventory; do not edit.\n"
        + yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        path = render(json.loads(Path(args[0]).read_text()), Path(args[1]))
    except (InventoryError, json.JSONDecodeError, KeyError) as exc:
        print(f"ckms_lab.inventory: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
