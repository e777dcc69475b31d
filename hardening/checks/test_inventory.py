"""The system inventory of this run matches the live devices (A.32; hardening/inventory.py).

scripts/report.sh collects the inventory from every host before the checks run and points
``CKMS_INVENTORY_RECORD`` at it. The check reads the live CA host and router again and compares: a host
missing from the record, an unreachable one, or an HSM token, module, daemon version or router rule set
that differs from what the record says fails it. The record is what the report shows a reviewer, so a
stale or partial one must not pass.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from ckms_checks import CA_HOME, CA_VENV, SOFTHSM_CONF

testinfra_hosts = ["ansible://ca"]

MAX_AGE = dt.timedelta(hours=6)


def _record() -> dict:
    path = os.environ.get("CKMS_INVENTORY_RECORD")
    assert path, (
        "A.32: no inventory was collected for this run (CKMS_INVENTORY_RECORD unset; scripts/report.sh sets it)"
    )
    assert Path(path).is_file(), f"A.32: the inventory record {path} does not exist"
    return json.loads(Path(path).read_text())


def _token_now(host, module: str) -> dict:
    out = host.run(f"env SOFTHSM2_CONF={SOFTHSM_CONF} pkcs11-tool --module {module} -L")
    assert out.rc == 0, f"A.32: pkcs11-tool -L failed on the CA host: {out.stderr.strip()[-300:]}"
    slots, cur = [], None
    for line in out.stdout.splitlines():
        if line.startswith("Slot "):
            cur = {}
            slots.append(cur)
            continue
        k, sep, v = line.strip().partition(":")
        if cur is not None and sep:
            cur[k.strip()] = v.strip()
    return {s.get("token label"): s for s in slots}


@pytest.mark.check("check:A.32.inventory_lists_all_devices")
def test_inventory_lists_all_devices(host, request, evidence):
    from testinfra.utils.ansible_runner import AnsibleRunner

    rec = _record()
    inv = request.config.getoption("ansible_inventory")
    expected = set(AnsibleRunner(inv).get_hosts("all"))
    hosts = rec.get("hosts", {})
    evidence.add("collected at", rec.get("collected_at"))
    evidence.add("hosts in the Ansible inventory", sorted(expected))
    evidence.add(
        "recorded",
        {
            n: {
                k: h.get(k)
                for k in ("os", "virtualisation", "boot", "packages", "groups", "declared", "error")
            }
            for n, h in hosts.items()
        },
    )
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(rec["collected_at"].replace("Z", "+00:00"))
    assert age < MAX_AGE, f"A.32: the inventory record is {age} old (collected {rec['collected_at']})"
    missing = sorted(expected - set(hosts))
    assert not missing, f"A.32: hosts missing from the inventory: {missing}"
    broken = {n: h["error"] for n, h in hosts.items() if "error" in h}
    assert not broken, f"A.32: hosts whose facts could not be collected: {broken}"
    thin = [
        n
        for n, h in hosts.items()
        if not (h.get("os", {}).get("name") and h.get("packages", {}).get("count"))
    ]
    assert not thin, f"A.32: hosts recorded without OS or package facts: {thin}"

    # The CA host: HSM module and token, daemon version, compared with the live host now.
    me = host.backend.get_hostname()
    ca = hosts.get(me, {}).get("ca")
    assert ca, f"A.32: the CA host {me} has no CA/HSM record"
    module = ca.get("module")
    toml = host.file(f"{CA_HOME}/ckms.toml").content_string
    assert module and f'module = "{module}"' in toml, (
        f"A.32: recorded HSM module {module} is not the one in ckms.toml"
    )
    digest = host.run(f"sha256sum {module}").stdout.split()[0]
    token = _token_now(host, module).get(ca.get("token_label"), {})
    version = (
        "ckms "
        + host.run(
            f"{CA_VENV}/bin/python -c \"import importlib.metadata as m; print(m.version('ckms'))\""
        ).stdout.strip()
    )
    evidence.add("HSM (recorded)", ca)
    evidence.add("HSM token now", token)
    assert ca.get("module_digest") == f"sha256:{digest}", (
        "A.32: the HSM module changed since the inventory was taken"
    )
    for key in ("token manufacturer", "token model", "serial num", "firmware version", "hardware version"):
        assert (ca.get("token") or {}).get(key) == token.get(key), (
            f"A.32: HSM {key}: recorded {(ca.get('token') or {}).get(key)!r}, token says {token.get(key)!r}"
        )
    assert ca.get("daemon_version") == version, (
        f"A.32: daemon version recorded {ca.get('daemon_version')!r}, installed {version!r}"
    )

    # The router: its loaded rule set is the one recorded.
    import testinfra

    routers = AnsibleRunner(inv).get_hosts("router")
    for name in routers:
        router = testinfra.get_host(f"ansible://{name}", ansible_inventory=inv)
        now = router.run("nft -s -t list ruleset | sha256sum").stdout.split()[0]
        recorded = (hosts.get(name, {}).get("firewall") or {}).get("ruleset_digest")
        evidence.add(f"router {name} rule set", {"recorded": recorded, "now": f"sha256:{now}"})
        assert recorded == f"sha256:{now}", (
            f"A.32: router {name}'s loaded rule set differs from the inventory's"
        )
