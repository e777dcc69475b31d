"""Checks of the ckms_ca role: the daemon runs unprivileged in a sandboxed unit (F.06 e), the CA key was
generated in the token and cannot leave it (E.08, E.12), the host firewall admits exactly the flow model
to EST/CRL (A.43), and a certificate can be issued and revoked end to end on the host (A.38)."""

from __future__ import annotations

import json
import re
import time

import pytest
import testinfra
from ckms_people import issue_and_revoke
from testinfra.utils.ansible_runner import AnsibleRunner

testinfra_hosts = ["ansible://ca"]

USER = "ckms"
HOME = "/var/lib/ckms"
VENV = "/opt/ckms/venv"
UNIT = "ckms-ca.service"
EXPOSURE_MAX = 2.5

KEY_ATTRS = r"""
import json, os, tomllib, pkcs11
home = os.environ["CKMS_HOME"]
cfg = tomllib.load(open(os.path.join(home, "ckms.toml"), "rb"))["hsm"]
if cfg.get("softhsm_conf"):
    os.environ["SOFTHSM2_CONF"] = os.path.join(home, cfg["softhsm_conf"])
token = pkcs11.lib(cfg["module"]).get_token(token_label=cfg["token_label"])
pin = open(os.path.join(home, cfg["pin_file"])).read().strip()
A = pkcs11.Attribute
with token.open(user_pin=pin) as s:
    keys = []
    for k in s.get_objects({A.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}):
        row = {"label": k.label}
        for name in ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "LOCAL", "WRAP_WITH_TRUSTED"):
            try:
                row[name] = bool(k[getattr(A, name)])
            except Exception:  # attribute not offered by the token
                row[name] = None
        keys.append(row)
print(json.dumps(keys))
"""


def as_ckms(host, command: str):
    return host.run(
        f"runuser -u {USER} -- env CKMS_HOME={HOME} SOFTHSM2_CONF={HOME}/hsm/softhsm2.conf {command}"
    )


@pytest.mark.check("check:F.06.e.ckms_runs_unprivileged_and_sandboxed")
def test_ckms_runs_unprivileged_and_sandboxed(host, evidence):
    svc = host.service("ckms-ca")
    assert svc.is_running and svc.is_enabled
    props = host.run(
        f"systemctl show {UNIT} -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
        "-p PrivateTmp -p CapabilityBoundingSet -p RestrictAddressFamilies -p ReadWritePaths "
        "-p UMask -p SystemCallFilter -p PrivateDevices"
    ).stdout
    p = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    evidence.add("unit properties", {k: v[:200] for k, v in p.items()})
    assert p["User"] == USER
    assert p["NoNewPrivileges"] == "yes" and p["ProtectSystem"] == "strict" and p["ProtectHome"] == "yes"
    assert p["PrivateTmp"] == "yes" and p["UMask"] == "0077"
    assert p["CapabilityBoundingSet"] == ""
    assert set(p["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert p["ReadWritePaths"].split() == [HOME]
    procs = host.run(
        "ps -o user= -C ckms -C python3 --no-headers; ps -eo user=,args= | grep '[c]kms ca serve'"
    ).stdout
    evidence.add("daemon processes", procs.strip())
    assert "root" not in {line.split()[0] for line in procs.splitlines() if "ckms ca serve" in line}
    sec = host.run(f"systemd-analyze security --no-pager {UNIT}")
    evidence.add("systemd-analyze security", sec.stdout[-2500:])
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
    assert m and float(m.group(1)) <= EXPOSURE_MAX, sec.stdout.splitlines()[-1:]


@pytest.mark.check("check:E.12.ca_key_cka_sensitive")
def test_ca_key_sensitive_and_unextractable(host, evidence):
    out = as_ckms(host, f"{VENV}/bin/python -c '{KEY_ATTRS}'")
    evidence.add("private keys in the token", out.stdout.strip() or out.stderr.strip()[-500:])
    assert out.rc == 0
    keys = json.loads(out.stdout)
    assert keys, "no private key in the CA token"
    for k in keys:
        # never readable; exportable at most wrapped under a trusted (custodian-held) key
        assert k["SENSITIVE"] and (not k["EXTRACTABLE"] or k["WRAP_WITH_TRUSTED"]), (
            f"E.12: a private key in the token is readable or exportable unwrapped: {k}"
        )


@pytest.mark.check("check:E.08.ca_key_generated_in_token")
def test_ca_key_generated_in_token(host, evidence):
    out = as_ckms(host, f"{VENV}/bin/python -c '{KEY_ATTRS}'")
    keys = json.loads(out.stdout)
    evidence.add("CKA_LOCAL / ALWAYS_SENSITIVE / NEVER_EXTRACTABLE", keys)
    assert keys and all(k["LOCAL"] and k["ALWAYS_SENSITIVE"] for k in keys), (
        f"E.08: private keys in the token not generated there (CKA_LOCAL) or once readable: {keys}"
    )


@pytest.mark.check("check:A.43.flows_rendered_from_model")
def test_ca_firewall_admits_exactly_the_flow_model(host, evidence):
    variables = host.ansible.get_variables()
    flows = [f for f in variables.get("ckms_flows", []) if "ca" in f["dst"] and f["port"] in (8443, 8080)]
    ruleset = host.run("nft list table inet ckms_ca")
    evidence.add("nft list table inet ckms_ca", ruleset.stdout)
    evidence.add("flow model (to the CA's daemon ports)", flows)
    assert ruleset.rc == 0
    accepted = set()
    for m in re.finditer(r"ip saddr \{?\s*([0-9./, ]+?)\s*\}? tcp dport (\d+) accept", ruleset.stdout):
        for cidr in m.group(1).split(","):
            accepted.add((cidr.strip(), int(m.group(2))))
    expected = {
        (c if "/" in c and not c.endswith("/32") else c.removesuffix("/32"), f["port"])
        for f in flows
        for c in f["src_cidrs"]
    }
    assert accepted == expected, (
        f"A.43: the CA firewall admits {sorted(accepted)}, the flow model {sorted(expected)}"
    )
    assert re.search(
        r"tcp dport \{ (8443, 8080|8080, 8443) \} counter packets \d+ bytes \d+ drop", ruleset.stdout
    )


@pytest.mark.check("check:A.38.issue_and_revoke_end_to_end")
def test_issue_and_revoke_end_to_end(host, request, evidence):
    """A named operator issues, revokes and publishes with their own credential (no demo identity)."""
    inv = request.config.getoption("ansible_inventory")
    terms = AnsibleRunner(inv).get_hosts("terminal")
    term = testinfra.get_host(f"ansible://{terms[0]}", ansible_inventory=inv) if terms else None
    m = re.search(r'^public_host\s*=\s*"([^"]+)"', host.file(f"{HOME}/ckms.toml").content_string, re.M)
    done = issue_and_revoke(host, term, m.group(1) if m else "127.0.0.1", f"check-a38-{int(time.time())}")
    evidence.add("issue, revoke, publish, fetch CRL (as a named operator)", done)
    assert done["issued"] == 200 and done["revoked"] == 200 and done["crl_published"] == 200, (
        f"A.38: issue, revoke or publish failed for a named operator: {done}"
    )
    assert done["serial_in_crl"], f"A.38: the revoked serial is not in the fetched CRL: {done}"


TLS_REFUSED = {
    "X25519 key exchange": "-tls1_3 -groups X25519",
    "X448 key exchange": "-tls1_3 -groups X448",
    "ChaCha20-Poly1305": "-tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256",
    "TLS 1.2": "-tls1_2",
}
TLS_ACCEPTED = {
    "P-256 with AES-128-GCM": ("-tls1_3 -groups P-256 -ciphersuites TLS_AES_128_GCM_SHA256", "prime256v1"),
    "P-384 with AES-256-GCM": ("-tls1_3 -groups P-384 -ciphersuites TLS_AES_256_GCM_SHA384", "secp384r1"),
}


@pytest.mark.check("check:A.64.tls_groups_and_suites_restricted")
def test_tls_groups_and_suites_restricted(host, request, evidence):
    """From the terminal, with a real TLS client (openssl s_client) toward the CA's EST port: X25519/X448
    key exchange, ChaCha20-Poly1305 and TLS 1.2 are refused; TLS 1.3 with ECDH P-256/P-384 and AES-GCM is
    accepted (A.62, A.64)."""
    inv = request.config.getoption("ansible_inventory")
    terms = AnsibleRunner(inv).get_hosts("terminal")
    client = testinfra.get_host(f"ansible://{terms[0]}", ansible_inventory=inv) if terms else host
    toml = host.file(f"{HOME}/ckms.toml").content_string
    m = re.search(r'^public_host\s*=\s*"([^"]+)"', toml, re.M)
    p = re.search(r"^est_port\s*=\s*(\d+)", toml, re.M)
    target = f"{m.group(1) if m else '127.0.0.1'}:{p.group(1) if p else 8443}"
    evidence.add("client", f"{'terminal ' + terms[0] if terms else 'the CA host itself'} -> {target}")

    def s_client(options: str):
        return client.run(f"openssl s_client -connect {target} -brief {options} </dev/null 2>&1")

    got = {}
    for name, options in TLS_REFUSED.items():
        out = s_client(options)
        got[name] = {"rc": out.rc, "output": out.stdout.strip()[-300:]}
        assert out.rc != 0 and "Ciphersuite:" not in out.stdout, f"A.64: {name} was accepted: {out.stdout}"
    for name, (options, curve) in TLS_ACCEPTED.items():
        out = s_client(options)
        got[name] = {"rc": out.rc, "output": out.stdout.strip()[-600:]}
        assert out.rc == 0 and "Protocol version: TLSv1.3" in out.stdout, (
            f"A.64: {name} refused: {out.stdout}"
        )
        assert re.search(rf"(Server|Peer) Temp Key: ECDH, {curve}", out.stdout), (
            f"A.64: {name}: no ECDH {curve} key exchange: {out.stdout}"
        )
    evidence.add("openssl s_client from the terminal", got)
