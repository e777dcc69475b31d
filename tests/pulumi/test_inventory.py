"""Stack outputs -> Ansible inventory: groups per role, management addresses, pinned host keys, flows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ckms_lab.inventory import InventoryError, render
from ckms_lab.model import build_environment

REPO = Path(__file__).resolve().parents[2]


def _outputs() -> dict:
    env = build_environment("lab", "lab").to_dict()
    hosts = {
        h["name"]: {
            **h,
            "mgmt_address": h["addresses"]["mgmt"],
            "host_key": f"ssh-ed25519 KEY{h['name']}",
            "netns": f"ckms-lab-{h['name']}",
        }
        for h in env["hosts"]
    }
    return {
        "kind": "lab",
        "controller_address": env["controller_address"],
        "hosts": hosts,
        "flows": env["flows"],
        "segments": env["segments"],
        "time_sources": list(env["time_sources"]),
    }


def test_inventory_has_groups_addresses_keys_and_flows(tmp_path):
    key = tmp_path / "id"
    path = render(_outputs(), tmp_path / "inv", ssh_key=key, ssh_public_key="ssh-ed25519 AAAAPUB controller")
    inv = yaml.safe_load(path.read_text())["all"]
    assert inv["hosts"]["ca1"]["ansible_host"] == "10.231.0.11"
    assert inv["hosts"]["terminal"]["ckms_addresses"]["lan"] == "10.231.20.10"
    assert set(inv["children"]) == {"router", "ca", "terminal", "admin", "rogue"}
    assert list(inv["children"]["ca"]["hosts"]) == ["ca1"]
    v = inv["vars"]
    assert v["ansible_ssh_private_key_file"] == str(key)
    assert "StrictHostKeyChecking=yes" in v["ansible_ssh_common_args"]
    # Ansible manages the hosts through the automation account with sudo, never as root
    assert v["ansible_user"] == "ckms-automation" and v["ansible_become"] is True
    assert v["os_hardening_automation_authorized_keys"] == ["ssh-ed25519 AAAAPUB controller"]
    assert {f["name"] for f in v["ckms_flows"]} == {"est", "admin-ssh", "ntp", "crl"}
    pins = (tmp_path / "inv" / "known_hosts").read_text().splitlines()
    assert "10.231.0.11 ssh-ed25519 KEYca1" in pins and len(pins) == 5


def test_ansible_reads_the_rendered_inventory(tmp_path):
    path = render(
        _outputs(), tmp_path / "inv", ssh_key=tmp_path / "id", ssh_public_key="ssh-ed25519 AAAAPUB c"
    )
    out = subprocess.run(
        [str(REPO / ".venv/bin/ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    assert data["rogue"]["hosts"] == ["rogue"]
    assert data["_meta"]["hostvars"]["router"]["ckms_flows"][0]["name"] == "est"
    assert data["_meta"]["hostvars"]["ca1"]["ansible_user"] == "ckms-automation"


def test_missing_outputs_are_an_explicit_error(tmp_path):
    with pytest.raises(InventoryError, match="hosts"):
        render({"flows": []}, tmp_path, ssh_key=tmp_path / "id", ssh_public_key="ssh-ed25519 AAAAPUB c")
