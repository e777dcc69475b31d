"""Checks of the router role (F.17-F.20, F.50 c, A.66): the filtering router in front of the CA segment
forwards exactly the flows of the environment model, limits every source, logs what it drops and
answers only registered administrators; the WireGuard endpoint knows registered peer keys only.

Run over SSH against an inventory (make report) or by Molecule (roles/router/molecule). The flow
model comes from the inventory (``ckms_flows``, written by ckms_lab.inventory) or, in a Molecule
scenario, is rebuilt from ``ckms_network`` with ckms_lab.model, so a rule set that was widened on the
router (or in the role's variables) cannot also widen what it is compared with.

The rule-set comparison is a pure function of ``nft -j`` output and the flow list
(:func:`forward_violations`, :func:`input_violations`), tested offline in tests/lab/test_drills.py.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

testinfra_hosts = ["ansible://router"]

TABLE = "ckms_router"
ANY = ipaddress.ip_network("0.0.0.0/0")


# ------------------------------------------------------------------------------------ the flow model
def model_flows(variables: dict[str, Any]) -> list[dict]:
    """The allowed flows: the inventory's ckms_flows, else the model built for ckms_network."""
    if variables.get("ckms_flows"):
        return list(variables["ckms_flows"])
    from ckms_lab.model import build_environment

    net = variables.get("ckms_network") or "10.231.0.0/16"
    return [dict(f) for f in build_environment("check", "lab", network=net).to_dict()["flows"]]


def _net(value: Any) -> ipaddress.IPv4Network:
    if isinstance(value, dict) and "prefix" in value:
        return ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}", strict=False)
    if isinstance(value, dict) and "range" in value:
        raise ValueError(f"address range {value}")
    return ipaddress.ip_network(str(value), strict=False)


def _values(right: Any) -> list[Any]:
    if isinstance(right, dict) and "set" in right:
        return list(right["set"])
    return [right]


def parse_rule(rule: dict) -> dict[str, Any]:
    """What one nft JSON rule matches and does (only what the checks need)."""
    out: dict[str, Any] = {
        "saddr": None,
        "daddr": None,
        "proto": None,
        "dports": [],
        "verdict": None,
        "jump": None,
        "ct_state": None,
        "iif": None,
        "other": [],
        "set_ref": None,
        "comment": rule.get("comment"),
        "dynset": False,
        "limit": False,
    }
    for e in rule.get("expr", []):
        if "match" in e:
            left, right = e["match"]["left"], e["match"]["right"]
            pl = left.get("payload") if isinstance(left, dict) else None
            if pl and pl.get("field") in ("saddr", "daddr") and pl.get("protocol") == "ip":
                if isinstance(right, str) and right.startswith("@"):
                    out["set_ref"] = right[1:]
                    out[pl["field"]] = []
                else:
                    out[pl["field"]] = [_net(v) for v in _values(right)]
            elif pl and pl.get("field") == "dport":
                out["proto"] = pl.get("protocol")
                out["dports"] = [int(v) for v in _values(right) if isinstance(v, int)]
            elif isinstance(left, dict) and "ct" in left and left["ct"].get("key") == "state":
                out["ct_state"] = sorted(
                    str(v) for v in (right if isinstance(right, list) else _values(right))
                )
            elif isinstance(left, dict) and "meta" in left and left["meta"].get("key") in ("iif", "iifname"):
                out["iif"] = right
            else:
                out["other"].append(e["match"])
        elif "accept" in e:
            out["verdict"] = "accept"
        elif "drop" in e:
            out["verdict"] = "drop"
        elif "jump" in e:
            out["jump"] = e["jump"]["target"]
        elif "set" in e or "dynset" in e:
            out["dynset"] = True
        elif "limit" in e:
            out["limit"] = True
    return out


def _chain(ruleset: list[dict], name: str) -> tuple[dict | None, list[dict]]:
    chain = next(
        (
            x["chain"]
            for x in ruleset
            if "chain" in x and x["chain"]["name"] == name and x["chain"].get("table") == TABLE
        ),
        None,
    )
    rules = [
        x["rule"]
        for x in ruleset
        if "rule" in x and x["rule"]["chain"] == name and x["rule"].get("table") == TABLE
    ]
    return chain, rules


def _covered(nets: list[ipaddress.IPv4Network] | None, allowed: list[str]) -> bool:
    if nets is None:
        nets = [ANY]
    allowed_nets = [ipaddress.ip_network(c, strict=False) for c in allowed]
    return all(any(n.subnet_of(a) for a in allowed_nets) for n in nets)


def _is_established(r: dict) -> bool:
    return (
        r["ct_state"] is not None
        and set(r["ct_state"]) <= {"established", "related"}
        and r["saddr"] is None
        and r["dports"] == []
    )


def forward_violations(ruleset: list[dict], flows: list[dict], own: list[str] = ()) -> list[str]:
    """Everything in the forward chain that the flow model does not allow ([] = exact)."""
    problems = []
    chain, rules = _chain(ruleset, "forward")
    if chain is None:
        return [f"F.18 a: no forward chain in table inet {TABLE}"]
    if chain.get("policy") != "drop":
        problems.append(f"F.18 a: forward policy is {chain.get('policy')!r}, not drop")
    own_nets = [ipaddress.ip_network(a if "/" in a else f"{a}/32") for a in own]
    routed = [f for f in flows if f.get("routed", True) and f.get("src_cidrs") and f.get("dst_cidrs")]
    seen: set[str] = set()
    for raw in rules:
        r = parse_rule(raw)
        if r["verdict"] != "accept":
            continue
        if _is_established(r):
            continue
        if not r["dports"]:
            problems.append(
                f"F.18 a: forward accepts without a port: {r['comment'] or json.dumps(raw['expr'])[:160]}"
            )
            continue
        for port in r["dports"]:
            match = [
                f
                for f in routed
                if f["proto"] == r["proto"]
                and int(f["port"]) == port
                and _covered(r["saddr"], f["src_cidrs"])
                and _covered(r["daddr"], f["dst_cidrs"])
            ]
            if not match:
                src = "any" if r["saddr"] is None else ", ".join(map(str, r["saddr"]))
                dst = "any" if r["daddr"] is None else ", ".join(map(str, r["daddr"]))
                problems.append(
                    f"F.18 a: forward accepts {r['proto']}/{port} from {src} to {dst} "
                    f"({r['comment'] or 'no comment'}), outside the flow model"
                )
            seen.update(f["name"] for f in match)
    for f in routed:
        if f["name"] in seen:
            continue
        if all(any(ipaddress.ip_network(d).subnet_of(o) for o in own_nets) for d in f["dst_cidrs"]):
            continue  # addressed to the router itself (input chain)
        problems.append(f"F.18 a: modelled flow {f['name']} has no forward rule")
    return problems


def input_violations(
    ruleset: list[dict],
    flows: list[dict],
    admin_sources: list[str],
    own: list[str],
    vpn_port: int | None,
    admin_port: int = 22,
) -> list[str]:
    """Everything the router itself accepts beyond admins, the VPN port and flows addressed to it."""
    problems = []
    chain, rules = _chain(ruleset, "input")
    if chain is None:
        return [f"A.66: no input chain in table inet {TABLE}"]
    if chain.get("policy") != "drop":
        problems.append(f"A.66: input policy is {chain.get('policy')!r}, not drop")
    own_nets = [ipaddress.ip_network(a if "/" in a else f"{a}/32") for a in own]
    to_router = [
        f
        for f in flows
        if f.get("dst_cidrs")
        and any(ipaddress.ip_network(d).subnet_of(o) for d in f["dst_cidrs"] for o in own_nets)
    ]
    for raw in rules:
        r = parse_rule(raw)
        if r["verdict"] != "accept" or _is_established(r):
            continue
        if r["iif"] == "lo" and not r["dports"]:
            continue
        if not r["dports"] and any("icmp" in json.dumps(m) for m in r["other"]) and r["limit"]:
            continue
        for port in r["dports"] or [None]:
            if r["set_ref"] == "admin_sources" and r["proto"] == "tcp" and port == admin_port:
                continue
            if vpn_port and r["proto"] == "udp" and port == vpn_port:
                continue
            if any(
                f["proto"] == r["proto"] and int(f["port"]) == port and _covered(r["saddr"], f["src_cidrs"])
                for f in to_router
            ):
                continue
            problems.append(
                f"A.66: the router accepts {r['proto']}/{port} ({r['comment'] or 'no comment'}) "
                "beyond its registered admins, VPN endpoint and modelled flows"
            )
    sets = [
        x["set"]
        for x in ruleset
        if "set" in x and x["set"]["name"] == "admin_sources" and x["set"].get("table") == TABLE
    ]
    elems = [] if not sets else [_net(v) for v in sets[0].get("elem", [])]
    if not _covered(elems, admin_sources):
        problems.append(
            f"A.66: router admin sources {sorted(map(str, elems))} exceed the registered "
            f"{sorted(admin_sources)}"
        )
    return problems


# ------------------------------------------------------------------------------------ host helpers
def variables(host) -> dict[str, Any]:
    return host.ansible.get_variables()


def ruleset(host) -> list[dict]:
    out = host.run(f"nft -j list table inet {TABLE}")
    if out.rc != 0:
        return []
    return json.loads(out.stdout)["nftables"]


def own_addresses(host, v: dict[str, Any]) -> list[str]:
    addrs = list((v.get("ckms_addresses") or {}).values())
    if not addrs:
        addrs = [a.split("/")[0] for a in host.interface.default().addresses]
    return [f"{a}/32" for a in addrs]


def admin_sources(v: dict[str, Any], flows: list[dict]) -> list[str]:
    ctrl = (v.get("ckms_controller_address") or "").split("/")[0]
    srcs = [c for f in flows if f["name"] == v.get("router_admin_flow", "admin-ssh") for c in f["src_cidrs"]]
    return ([f"{ctrl}/32"] if ctrl else []) + srcs


def peer(host, group: str):
    """Another inventory host by group (first one), over the same Ansible inventory."""
    import testinfra

    inv = getattr(host.backend, "ansible_inventory", None)
    names = host.backend.get_hosts(f"ansible://{group}", ansible_inventory=inv) if inv else []
    if not names:
        from testinfra.utils.ansible_runner import AnsibleRunner

        names = AnsibleRunner(inv).get_hosts(group)
    if not names:
        pytest.skip(f"no {group} host in the inventory")
    return testinfra.get_host(f"ansible://{names[0]}", ansible_inventory=inv)


def _ip_of(h, segment: str) -> str:
    return h.ansible.get_variables()["ckms_addresses"][segment]


# ------------------------------------------------------------------------------------------- checks
@pytest.mark.check("check:F.17.router_default_drop")
def test_router_default_drop(host, evidence):
    rs = ruleset(host)
    assert rs, f"F.17: table inet {TABLE} is not loaded"
    policies = {
        x["chain"]["name"]: x["chain"].get("policy") for x in rs if "chain" in x and "hook" in x["chain"]
    }
    evidence.add("base chain policies", policies)
    assert policies.get("input") == "drop" and policies.get("forward") == "drop", (
        f"F.17: router input/forward policies are {policies}, not drop"
    )
    tables = [t for t in host.run("nft list tables").stdout.splitlines() if t.strip()]
    evidence.add("tables", tables)
    for t in tables:
        name = t.split()[-1]
        if name in (TABLE, f"{TABLE}_meta"):
            continue
        listing = host.run(f"nft list table {' '.join(t.split()[1:])}").stdout
        assert "hook forward" not in listing and "hook input" not in listing, (
            f"F.17: another table ({t.strip()}) hooks input/forward and may accept around the flow model"
        )
    fwd = host.sysctl("net.ipv4.ip_forward")
    evidence.add("net.ipv4.ip_forward", fwd)


def _rules_match(host, evidence, item: str) -> None:
    v = variables(host)
    flows = model_flows(v)
    rs = ruleset(host)
    evidence.add(
        "flow model", [{k: f[k] for k in ("name", "proto", "port", "src_cidrs", "dst_cidrs")} for f in flows]
    )
    _, fwd = _chain(rs, "forward")
    evidence.add(
        "forward accept rules",
        [parse_rule(r)["comment"] for r in fwd if parse_rule(r)["verdict"] == "accept"],
    )
    assert rs, f"{item}: table inet {TABLE} is not loaded"
    problems = forward_violations(rs, flows, own_addresses(host, v))
    problems += input_violations(
        rs, flows, admin_sources(v, flows), own_addresses(host, v), int(v.get("router_vpn_port", 51820))
    )
    evidence.add("violations", problems or "none")
    assert not problems, "; ".join(
        p.replace("F.18 a:", f"{item}:") if item != "F.18 a" else p for p in problems
    )


@pytest.mark.check("check:F.18.a.router_rules_match_flow_model")
def test_router_rules_match_flow_model(host, evidence):
    _rules_match(host, evidence, "F.18 a")


@pytest.mark.check("check:F.50.c.router_rules_match_flow_model")
def test_router_rules_reviewed_against_flow_model(host, evidence):
    """F.50 c (rule review): the loaded rule set is the one rendered from the model, and equals it."""
    meta = host.run(f"nft list table inet {TABLE}_meta")
    conf = host.file("/etc/nftables.conf")
    evidence.add("loaded rule set id", meta.stdout.strip()[:200] or meta.stderr.strip())
    assert meta.rc == 0 and conf.exists, (
        "F.50 c: the rendered rule set is not what is loaded (no ckms_router_meta)"
    )
    rid = meta.stdout.split("rules ")[-1].split('"')[0]
    assert rid and rid in conf.content_string, "F.50 c: loaded rule set id differs from /etc/nftables.conf"
    check = host.run("nft -c -f /etc/nftables.conf")
    evidence.add("nft -c -f /etc/nftables.conf", check.rc)
    assert check.rc == 0, f"F.50 c: /etc/nftables.conf does not validate: {check.stderr[:300]}"
    _rules_match(host, evidence, "F.50 c")


def _dos_rules(host) -> list[dict]:
    _, fwd = _chain(ruleset(host), "forward")
    return [parse_rule(r) for r in fwd]


def _first_accept(rules: list[dict]) -> int:
    return next((i for i, r in enumerate(rules) if r["verdict"] == "accept" and r["dports"]), len(rules))


@pytest.mark.check("check:F.19.syn_flood_protection_enabled")
def test_syn_flood_protection(host, evidence):
    rs = ruleset(host)
    rules = [parse_rule(r) for r in _chain(rs, "forward")[1]]
    limits = [(i, r["jump"]) for i, r in enumerate(rules) if r["dynset"] and r["jump"]]
    evidence.add("per-source limit rules (position, target)", limits)
    syn = [i for i, t in limits if t == "log_drop_syn_flood"]
    assert syn and syn[0] < _first_accept(rules), "F.19: no per-source SYN rate limit before the flow rules"
    pre = [parse_rule(r) for r in _chain(rs, "prerouting")[1]]
    evidence.add("prerouting drops", [r["jump"] for r in pre])
    assert any(r["jump"] == "log_drop_invalid" for r in pre), (
        "F.19: no drop of malformed TCP flag combinations"
    )
    inv = [r for r in rules if r["ct_state"] == ["invalid"]]
    assert inv, "F.19: invalid conntrack state is not dropped on forward"
    cookies = host.sysctl("net.ipv4.tcp_syncookies")
    evidence.add("net.ipv4.tcp_syncookies", cookies)
    assert cookies == 1, "F.19: SYN cookies off"


@pytest.mark.check("check:F.19.rate_limits_on_ca_ports")
def test_rate_limits(host, evidence):
    rules = _dos_rules(host)
    targets = [r["jump"] for r in rules[: _first_accept(rules)] if r["dynset"]]
    evidence.add("limits before the first flow rule", targets)
    for want in ("log_drop_rate", "log_drop_connlimit", "log_drop_syn_flood"):
        assert want in targets, f"F.19: per-source limit {want} missing before the flow rules"
    listing = host.run(f"nft list chain inet {TABLE} forward").stdout
    evidence.add(
        "limit statements",
        [ln.strip() for ln in listing.splitlines() if "limit rate over" in ln or "ct count" in ln],
    )


@pytest.mark.check("check:F.20.unregistered_source_dropped")
def test_unregistered_source_dropped(host, evidence):
    rogue, term, ca = peer(host, "rogue"), peer(host, "terminal"), peer(host, "ca")
    ca_ip = _ip_of(ca, "ca")
    before = host.run(f"nft -j list chain inet {TABLE} log_drop_forward").stdout
    results = {}
    for port in (8443, 8080, 22):
        results[f"rogue->ca:{port}"] = rogue.run(f"nc -z -w 2 {ca_ip} {port}").rc
    results["terminal->ca:8443"] = term.run(f"nc -z -w 3 {ca_ip} 8443").rc
    after = host.run(f"nft -j list chain inet {TABLE} log_drop_forward").stdout
    evidence.add("nc exit codes (0 = connected)", results)

    def count(js: str) -> int:
        try:
            rules = [x["rule"] for x in json.loads(js)["nftables"] if "rule" in x]
            return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)
        except (ValueError, KeyError):
            return -1

    evidence.add("forward drop counter before/after", [count(before), count(after)])
    rogue_ip = _ip_of(rogue, "lan")
    log = host.run(
        f"grep -c 'SRC={rogue_ip} ' {variables(host).get('router_log_file', '/var/log/ulog/ckms-router.log')}"
    )
    evidence.add("drop log lines from the rogue host", log.stdout.strip())
    assert all(results[k] != 0 for k in results if k.startswith("rogue")), (
        f"F.20: rogue host reached the CA: {results}"
    )
    assert results["terminal->ca:8443"] == 0, "F.20: the registered terminal cannot reach EST (flow est)"
    assert count(after) > count(before), "F.20: the rogue host's packets were not counted as dropped"
    assert log.rc == 0 and int(log.stdout.strip() or 0) > 0, "F.20: drops of the rogue host are not logged"


@pytest.mark.check("check:F.17.vpn_endpoint_configured")
def test_vpn_endpoint_configured(host, evidence):
    v = variables(host)
    iface = v.get("router_vpn_interface", "wg0")
    conf, key = host.file(f"/etc/wireguard/{iface}.conf"), host.file(f"/etc/wireguard/{iface}.key")
    assert conf.exists and key.exists, "F.17: no WireGuard configuration or key on the router"
    evidence.add("modes", {"conf": oct(conf.mode), "key": oct(key.mode), "key owner": key.user})
    assert conf.mode == 0o600 and key.mode == 0o600 and key.user == "root", (
        "F.17: VPN key material readable by others"
    )
    assert "PrivateKey" not in conf.content_string, "F.17: private key inside the config file"
    peers = v.get("router_vpn_peers", [])
    registered = sorted(p["public_key"] for p in peers)
    configured = sorted(
        ln.split("=", 1)[1].strip()
        for ln in conf.content_string.splitlines()
        if ln.strip().startswith("PublicKey")
    )
    allowed = sorted(
        str(ipaddress.ip_network(a.strip(), strict=False))
        for ln in conf.content_string.splitlines()
        if ln.strip().startswith("AllowedIPs")
        for a in ln.split("=", 1)[1].split(",")
    )
    vpn_cidr = next((s["cidr"] for s in v.get("ckms_segments", []) if s["name"] == "vpn"), None)
    evidence.add(
        "registered peers", [{k: p.get(k) for k in ("name", "public_key", "address")} for p in peers]
    )
    evidence.add("configured peers", configured)
    evidence.add("configured allowed addresses", allowed)
    # An endpoint without peers admits nobody: "configured" would describe a VPN no administrator can use.
    assert peers, (
        "F.17: no VPN peer registered (router_vpn_peers is empty): the emergency administration VPN admits "
        "nobody"
    )
    misplaced = [
        p.get("name") or p["public_key"]
        for p in peers
        if not p.get("address")
        or ipaddress.ip_network(p["address"], strict=False).prefixlen != 32
        or (
            vpn_cidr
            and not ipaddress.ip_network(p["address"], strict=False).subnet_of(ipaddress.ip_network(vpn_cidr))
        )
    ]
    assert not misplaced, f"F.17: VPN peers without a /32 address in the VPN segment {vpn_cidr}: {misplaced}"
    assert configured == registered, "F.17: VPN peers differ from the registered peer keys"
    want = sorted(str(ipaddress.ip_network(p["address"], strict=False)) for p in peers)
    assert allowed == want, f"F.17: the peers' allowed addresses {allowed} differ from the registered {want}"
    show = host.run(f"wg show {iface} dump")
    impl = "kernel" if host.run("test -e /sys/module/wireguard").rc == 0 else "wireguard-go (userspace)"
    evidence.add(
        "running",
        {
            "rc": show.rc,
            "implementation": impl,
            "peers": sorted(ln.split("\t")[0] for ln in show.stdout.splitlines()[1:]),
        },
    )
    if v.get("router_vpn_up", True):
        assert show.rc == 0, f"F.17: the VPN interface {iface} is not up: {show.stderr.strip()}"
        assert sorted(ln.split("\t")[0] for ln in show.stdout.splitlines()[1:]) == registered, (
            "F.17: the running VPN has peers that are not registered"
        )
        port = show.stdout.splitlines()[0].split("\t")[2]
        assert port == str(v.get("router_vpn_port", 51820)), f"F.17: VPN listens on {port}"


@pytest.mark.check("check:A.66.admin_access_only_via_vpn")
def test_admin_access_only_registered(host, evidence):
    v = variables(host)
    flows = model_flows(v)
    admin = [f for f in flows if f["name"] == v.get("router_admin_flow", "admin-ssh")]
    evidence.add("admin flow", admin)
    assert admin, "A.66: the model has no admin flow"
    vpn_cidr = next((s["cidr"] for s in v.get("ckms_segments", []) if s["name"] == "vpn"), None)
    for f in admin:
        assert ipaddress.ip_network("0.0.0.0/0") not in [ipaddress.ip_network(c) for c in f["src_cidrs"]], (
            "A.66: administration open to any source"
        )
        assert all(
            ipaddress.ip_network(c).prefixlen == 32 or c == vpn_cidr or vpn_cidr is None
            for c in f["src_cidrs"]
        ), f"A.66: admin sources are not registered addresses or the VPN: {f['src_cidrs']}"
    rs = ruleset(host)
    problems = input_violations(
        rs, flows, admin_sources(v, flows), own_addresses(host, v), int(v.get("router_vpn_port", 51820))
    )
    evidence.add("router input violations", problems or "none")
    assert not problems, "; ".join(problems)
    rogue = peer(host, "rogue")
    rc = rogue.run(f"nc -z -w 2 {_ip_of(host, 'lan')} 22").rc
    evidence.add("rogue -> router ssh (nc rc)", rc)
    assert rc != 0, "A.66: an unregistered LAN host reaches the router's sshd"


@pytest.mark.check("check:A.66.no_direct_external_access")
def test_no_direct_external_access(host, evidence):
    rs = ruleset(host)
    _, fwd = _chain(rs, "forward")
    wide = []
    for raw in fwd:
        r = parse_rule(raw)
        if r["verdict"] == "accept" and not _is_established(r):
            if r["saddr"] is None or any(n.prefixlen < 16 for n in r["saddr"]):
                wide.append(r["comment"] or json.dumps(raw["expr"])[:120])
    evidence.add("forward accepts from wide sources", wide or "none")
    assert not wide, f"A.66: forwarded traffic accepted from any/wide sources: {wide}"
