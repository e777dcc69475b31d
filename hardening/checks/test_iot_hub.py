"""The toy model's IoT hub on the lab (guidance 1.4; A.37): CRLs reach it through the terminal's relay, and
a device revoked on the terminal is refused there within the relay's interval.

The hub, its relay and the device all run the shipped code (role iot_hub: ``ckms hub serve`` on the hub's
own segment, ``ckms-crl-relay.timer`` on the terminal, ``ckms hub connect`` as the device). The drill is
what an operator would do: enrol a device on the terminal with their own credential, see it accepted at
the hub, revoke it with ``ckms terminal revoke``, and time how long the hub keeps accepting it. Nothing
triggers the relay by hand: the measured time is what the timer gives. An inventory without a hub (a site
whose hub is not ckms's) skips these checks.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest
from ckms_checks import TERMINAL_DIR, ca_setting, enrolled_operator, group_host

testinfra_hosts = ["ansible://ca"]

HUB_CONF = f"{TERMINAL_DIR}/hub.conf"
CRL_MAX_S = 3600  # A.37: a revocation may take up to an hour to reach the relying party
SLACK_S = 20  # timer accuracy, one poll, TLS handshakes through the router


@pytest.fixture(scope="module")
def hub(request):
    found = group_host(request, "hub")
    if found is None:
        pytest.skip("no IoT hub in this inventory (the site's hub is not deployed by ckms)")
    return found


@pytest.fixture(scope="module")
def terminal(request, hub):
    term = group_host(request, "terminal")
    if term is None:
        pytest.fail("A.37: the inventory has a hub but no certificate-management terminal to relay CRLs")
    return term


@pytest.fixture(scope="module")
def hub_conf(terminal) -> dict[str, str]:
    conf = terminal.file(HUB_CONF)
    assert conf.exists, f"A.37: {HUB_CONF} missing on the terminal: the relay is not deployed"
    return dict(
        line.split("=", 1)
        for line in conf.content_string.splitlines()
        if "=" in line and not line.startswith("#")
    )


@pytest.fixture(scope="module")
def operator(terminal) -> str:
    name = enrolled_operator(terminal)
    if name is None:
        pytest.fail(f"no enrolled operator in {TERMINAL_DIR}/people on the terminal")
    return name


def _crl_number_served(terminal, crl_host: str, crl_port: str) -> int | None:
    """The CA's newest full CRL number, as the terminal fetches it."""
    out = terminal.run(
        f"curl -s --max-time 5 http://{crl_host}:{crl_port}/crl/full.crl | openssl crl -inform DER -noout -crlnumber"
    )
    text = out.stdout.strip().rpartition("=")[2]
    return int(text, 16) if out.rc == 0 and text else None


def _hub_status(terminal, hub_conf: dict[str, str], hub_name: str) -> dict:
    """The hub's own view (its upload listener's /status), over TLS with the pinned certificate."""
    url = hub_conf["HUB_UPLOAD_URL"]
    address = url.split("//", 1)[1]
    host, _, port = address.rpartition(":")
    out = terminal.run(
        f"curl -s --max-time 5 --cacert {shlex.quote(hub_conf['HUB_CERT'])} "
        f"--resolve {hub_name}:{port}:{host} https://{hub_name}:{port}/status"
    )
    return (
        json.loads(out.stdout)
        if out.rc == 0 and out.stdout.strip().startswith("{")
        else {"error": out.stderr}
    )


@pytest.mark.check("check:A.37.hub_holds_newest_crl")
def test_hub_holds_newest_crl(host, hub, terminal, hub_conf, evidence):
    """The hub serves, the relay's timer runs on the terminal, and the hub holds the CA's newest CRL."""
    hub_unit = hub.service("ckms-hub.service")
    timer = terminal.run(
        "systemctl show ckms-crl-relay.timer -p ActiveState -p UnitFileState -p NextElapseUSecRealtime"
    )
    last = terminal.run(
        "systemctl show ckms-crl-relay.service -p Result -p ExecMainStatus -p ExecMainExitTimestamp"
    )
    evidence.add("hub service", {"running": hub_unit.is_running, "enabled": hub_unit.is_enabled})
    evidence.add("relay timer (terminal)", timer.stdout.strip().splitlines())
    evidence.add("relay's last round (terminal)", last.stdout.strip().splitlines())
    evidence.add("relay interval (s)", hub_conf.get("RELAY_INTERVAL_S"))
    assert hub_unit.is_running and hub_unit.is_enabled, "A.37: ckms-hub.service is not enabled and running"
    assert "ActiveState=active" in timer.stdout, f"A.37: the relay's timer is not active: {timer.stdout}"
    interval = int(hub_conf.get("RELAY_INTERVAL_S", "60"))
    crl_endpoint = ca_setting(host, "public_host", "127.0.0.1"), ca_setting(host, "crl_port", "8080")
    hub_name = hub.check_output("hostname")
    deadline = time.monotonic() + interval + SLACK_S
    while True:
        ca_number = _crl_number_served(terminal, *crl_endpoint)
        status = _hub_status(terminal, hub_conf, hub_name)
        if ca_number is not None and (status.get("crl_number") or -1) >= ca_number:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    evidence.add("CA's newest full CRL number", ca_number)
    evidence.add("hub status", status)
    relay_log = terminal.run("journalctl -u ckms-crl-relay.service -n 3 -o cat --no-pager").stdout
    evidence.add("relay's last log lines", relay_log.strip().splitlines()[-3:])
    assert ca_number is not None, "A.37: the terminal cannot fetch the CA's full CRL"
    assert status.get("usable") is True, f"A.37: the hub holds no usable CRL: {status}"
    assert status.get("crl_number", -1) >= ca_number, (
        f"A.37: the hub holds CRL {status.get('crl_number')}, the CA serves {ca_number}, {interval + SLACK_S} s on"
    )


DRILL = r"""
set -u
. {hub_conf}
dev=$1; out=$2; op=$3; limit=$4
now() {{ date +%s.%N; }}
connect() {{
  a=$(ckms hub connect --hub "$HUB_DEVICE" --hub-cert "$HUB_CERT" --cert "$out/$dev.pem" --key "$out/$dev.key" 2>/dev/null)
  r=$?; [ -n "$a" ] || a=null; echo "$a"; return $r
}}
ckms-enroll "$dev" "$out" >"$out/enrol.log" 2>&1 || {{ echo '{{"step":"enrol","ok":false}}'; cat "$out/enrol.log" >&2; exit 1; }}
serial=$(openssl x509 -in "$out/$dev.pem" -noout -serial | cut -d= -f2)
echo "{{\"step\":\"enrol\",\"ok\":true,\"serial\":\"$serial\",\"at\":$(now)}}"
first=$(connect); rc=$?
echo "{{\"step\":\"before\",\"rc\":$rc,\"answer\":$first,\"at\":$(now)}}"
[ $rc -eq 0 ] || exit 1
t0=$(now)
ckms terminal revoke --device-id "$dev" --reason keyCompromise --yes >"$out/revoke.log" 2>&1; rc=$?
echo "{{\"step\":\"revoke\",\"rc\":$rc,\"started\":$t0,\"at\":$(now)}}"
[ $rc -eq 0 ] || {{ cat "$out/revoke.log" >&2; exit 1; }}
end=$(( $(date +%s) + limit ))
while [ "$(date +%s)" -lt "$end" ]; do
  answer=$(connect); rc=$?
  if [ $rc -ne 0 ]; then echo "{{\"step\":\"refused\",\"answer\":$answer,\"at\":$(now)}}"; exit 0; fi
  sleep 1
done
echo '{{"step":"still accepted"}}'
exit 1
"""


@pytest.mark.check("check:A.37.revoked_device_refused_at_hub")
def test_revoked_device_refused_at_hub(host, hub, terminal, hub_conf, operator, evidence):
    """Drill: enrol on the terminal, accepted at the hub, revoke on the terminal, refused at the hub in time."""
    interval = int(hub_conf.get("RELAY_INTERVAL_S", "60"))
    publish = int(ca_setting(host, "max_publish_delay_seconds", "60"))
    bound = publish + interval + SLACK_S
    device = f"hub-drill-{int(time.time())}"
    workdir = f"/tmp/{device}"
    script = DRILL.format(hub_conf=HUB_CONF)
    since = hub.check_output("date -u '+%Y-%m-%d %H:%M:%S'")
    run = terminal.run(
        f"install -d -m 0700 -o {operator} {workdir} && cd /tmp && runuser -u {operator} -- "
        f"sh -c {shlex.quote(script)} drill {device} {workdir} {operator} {bound + 30}; rc=$?; rm -rf {workdir}; exit $rc"
    )
    steps = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            step = json.loads(line)
            steps[step["step"]] = step
    hub_log = (
        hub.run(
            f"journalctl -u ckms-hub.service --since {shlex.quote(since)} -o cat --no-pager | grep -E 'device\\.|crl\\.'"
        )
        .stdout.strip()
        .splitlines()
    )
    evidence.add(
        "device", {"id": device, "serial": steps.get("enrol", {}).get("serial"), "operator": operator}
    )
    evidence.add("drill steps (terminal)", list(steps.values()))
    evidence.add("hub log during the drill", hub_log[-12:])
    evidence.add("relay interval (s) / CA publication bound (s) / allowed (s)", [interval, publish, bound])
    assert steps.get("before", {}).get("rc") == 0, (
        f"A.37: the freshly enrolled device was not accepted at the hub: {steps} {run.stderr[-400:]}"
    )
    assert steps.get("revoke", {}).get("rc") == 0, (
        f"A.37: revocation on the terminal failed: {run.stderr[-400:]}"
    )
    refused = steps.get("refused")
    delay = round(refused["at"] - steps["revoke"]["started"], 1) if refused else None
    evidence.add(
        "revocation on the terminal → device refused at the hub (s)", delay if delay is not None else "never"
    )
    assert refused is not None, f"A.37: the revoked device was still accepted at the hub after {bound + 30} s"
    assert any("revoked" in line and "device.refused" in line for line in hub_log), (
        "A.37: the hub's log does not record the refusal of a revoked device"
    )
    assert delay <= min(bound, CRL_MAX_S), (
        f"A.37: the revoked device was refused at the hub after {delay} s (allowed {bound} s: CA publication "
        f"{publish} s + relay interval {interval} s + {SLACK_S} s)"
    )
