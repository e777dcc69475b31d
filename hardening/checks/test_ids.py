"""Checks of the CA host's own perimeter: the IDS (role ids; F.17, F.18 b, F.20, F.50 c) and the host
firewall rendered by os_hardening from the same flow model (F.18 a, CA side).

Live probes are sent only between lab hosts: from the host in group ``router`` (it sits on the CA
segment; in the Molecule scenario a plain host at the router's address) to the CA's address.
Run over SSH against an inventory (make report) or by Molecule (roles/ids/molecule)."""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hardening.checks.test_router import _covered, model_flows, parse_rule  # noqa: E402

testinfra_hosts = ["ansible://ca"]

EVE = "/var/log/suricata/eve.json"
RULES = "/etc/suricata/ckms/ckms-flows.rules"
SOCK = "/run/suricata/suricata-command.socket"
DETECT_WITHIN_S = 30


def ca_address(host) -> str:
    return host.ansible.get_variables()["ckms_addresses"]["ca"]


def probe_host(host):
    import testinfra
    from testinfra.utils.ansible_runner import AnsibleRunner

    inv = getattr(host.backend, "ansible_inventory", None)
    names = AnsibleRunner(inv).get_hosts("router")
    if not names:
        pytest.skip("no host in group router to probe from")
    return testinfra.get_host(f"ansible://{names[0]}", ansible_inventory=inv)


def alerts_since(host, since: float, sid: int | None = None) -> list[dict]:
    out = host.run(f"tail -n 2000 {EVE}").stdout
    found = []
    for line in out.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event_type") != "alert":
            continue
        ts = time.mktime(time.strptime(ev["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if ts + 1 < since:
            continue
        if sid is None or ev["alert"]["signature_id"] == sid:
            found.append(ev)
    return found


def wait_for_alert(
    host, since: float, sid: int, timeout: float = DETECT_WITHIN_S
) -> tuple[list[dict], float]:
    deadline = time.time() + timeout
    while True:
        got = alerts_since(host, since, sid)
        if got or time.time() > deadline:
            return got, time.time() - since
        time.sleep(1)


def remote_now(host) -> float:
    return float(host.run("date +%s.%N").stdout.strip())


@pytest.mark.check("check:F.17.ids_running")
def test_ids_running(host, evidence):
    svc = host.service("suricata")
    evidence.add("suricata active/enabled", [svc.is_running, svc.is_enabled])
    assert svc.is_running and svc.is_enabled, "F.17: Suricata is not running and enabled on the CA server"
    ifaces = host.run(f"suricatasc -c iface-list {SOCK}")
    stats = host.run(f"suricatasc -c ruleset-stats {SOCK}")
    evidence.add("iface-list", ifaces.stdout.strip())
    evidence.add("ruleset-stats", stats.stdout.strip())
    want = host.run(f"ip -o -4 addr show to {ca_address(host)}").stdout.split()[1]
    assert want in ifaces.stdout, f"F.17: Suricata does not capture on the CA-segment interface {want}"
    loaded = json.loads(stats.stdout)["message"][0]
    assert loaded["rules_loaded"] > 0 and loaded["rules_failed"] == 0, f"F.17: rules not loaded: {loaded}"


def _pass_rules(text: str) -> list[tuple[str, str, str, str]]:
    rules = []
    for ln in text.splitlines():
        if ln.startswith("pass "):
            parts = ln.split()
            rules.append((parts[1], parts[2], parts[5], parts[6]))  # proto, src, dst, dport
    return rules


@pytest.mark.check("check:F.50.c.ids_signatures_current")
def test_ids_signatures_current(host, evidence):
    """The IDS allow-list is the current flow model: a pass rule per modelled flow of the CA, nothing more."""
    flows = model_flows(host.ansible.get_variables())
    me = f"{ca_address(host)}/32"
    text = host.file(RULES).content_string
    passes = _pass_rules(text)
    evidence.add("pass rules", passes)
    expected = set()
    for f in flows:
        if me in f.get("dst_cidrs", []):
            expected.add((f["proto"], f"[{','.join(f['src_cidrs'])}]", "$CKMS_CA", str(f["port"])))
        if me in f.get("src_cidrs", []):
            expected.add((f["proto"], "$CKMS_CA", f"[{','.join(f['dst_cidrs'])}]", str(f["port"])))
    evidence.add("expected from the flow model", sorted(expected))
    extra = [p for p in passes if p not in expected]
    assert not extra, f"F.50 c: IDS pass rules outside the flow model: {extra}"
    assert len(passes) == len(expected), (
        f"F.50 c: IDS pass rules {len(passes)} != modelled flows {len(expected)}"
    )
    for sid in ("801", "802", "804", "805", "901", "902"):
        assert f"sid:{9100000 + int(sid)};" in text, f"F.50 c: signature {sid} missing"
    valid = host.run(f"suricata -T -c /etc/suricata/ckms-suricata.yaml -S {RULES}")
    evidence.add("suricata -T", valid.rc)
    assert valid.rc == 0, "F.50 c: the IDS rule set does not validate"


@pytest.mark.check("check:F.18.b.ids_alerts_on_unmodelled_flow")
def test_ids_alerts_on_unmodelled_flow(host, evidence):
    probe = probe_host(host)
    since = remote_now(host)
    probe.run(f"nc -z -w 1 {ca_address(host)} 9999")
    got, took = wait_for_alert(host, since, 9100801)
    evidence.add("alert", got[:1])
    evidence.add("seconds to alert", round(took, 1))
    assert got, f"F.18 b: no IDS alert within {DETECT_WITHIN_S} s for a connection outside the flow model"
    time.sleep(1.5)
    hook = host.run("grep -c 9100801 /var/log/ckms-ids-alerts.log")
    log = host.run("journalctl -t ckms-ids --no-pager -n 50 -o cat")
    evidence.add("alert command log lines", hook.stdout.strip())
    evidence.add("syslog (ckms-ids)", log.stdout.strip().splitlines()[-3:])
    assert int(hook.stdout.strip() or 0) > 0, "F.18 b: the alert command did not receive the alert"
    assert "sid=9100801" in log.stdout, "F.18 b: the alert did not reach syslog"


@pytest.mark.check("check:F.20.off_pattern_traffic_detected")
def test_scan_detected(host, evidence):
    probe = probe_host(host)
    since = remote_now(host)
    scan = probe.run(f"nmap -n -Pn -sS --max-retries 0 --max-rate 200 -p 1-60 {ca_address(host)}")
    evidence.add("scan (nmap rc)", scan.rc)
    got, took = wait_for_alert(host, since, 9100901)
    evidence.add("scan alert", got[:1])
    evidence.add("seconds to alert", round(took, 1))
    assert got, f"F.20: a port scan of the CA was not detected within {DETECT_WITHIN_S} s"


@pytest.mark.check("check:F.18.a.ca_host_firewall_matches_flow_model")
def test_ca_host_firewall_matches_flow_model(host, evidence):
    """CA side of F.18 a: the host firewall (os_hardening, table inet ckms_host) accepts only the flows whose
    destination is the CA, from their modelled sources, plus management SSH from the controller."""
    out = host.run("nft -j list table inet ckms_host")
    if out.rc != 0:
        pytest.skip("no host firewall (os_hardening not applied to this host)")
    rs = json.loads(out.stdout)["nftables"]
    v = host.ansible.get_variables()
    flows = model_flows(v)
    me = f"{ca_address(host)}/32"
    inbound = [f for f in flows if me in f.get("dst_cidrs", [])]
    ctrl = (v.get("ckms_controller_address") or "").split("/")[0]
    pol = next((x["chain"].get("policy") for x in rs if "chain" in x and x["chain"]["name"] == "input"), None)
    evidence.add("input policy", pol)
    assert pol == "drop", "F.18 a: CA host input policy is not drop"
    bad, seen = [], set()
    for x in rs:
        if "rule" not in x or x["rule"]["chain"] != "input":
            continue
        r = parse_rule(x["rule"])
        if r["verdict"] != "accept" or not r["dports"]:
            continue
        for port in r["dports"]:
            ok = [
                f
                for f in inbound
                if f["proto"] == r["proto"]
                and int(f["port"]) == port
                and _covered(r["saddr"], f["src_cidrs"])
            ]
            if ok:
                seen.update(f["name"] for f in ok)
            elif (
                r["proto"] == "tcp"
                and port == 22
                and ctrl
                and r["saddr"]
                and all(n.subnet_of(ipaddress.ip_network(f"{ctrl}/32")) for n in r["saddr"])
            ):
                continue
            else:
                src = "any" if r["saddr"] is None else ", ".join(map(str, r["saddr"]))
                bad.append(f"{r['proto']}/{port} from {src} ({r['comment']})")
    evidence.add("modelled inbound flows", [f["name"] for f in inbound])
    evidence.add("violations", bad or "none")
    assert not bad, f"F.18 a: CA host firewall accepts outside the flow model: {bad}"
    missing = [f["name"] for f in inbound if f["name"] not in seen]
    assert not missing, f"F.18 a: modelled flows without a CA host firewall rule: {missing}"
