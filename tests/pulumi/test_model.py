"""The environment model: segments, addresses, roles and the allowed flows as data."""

from __future__ import annotations

import ipaddress

import pytest

from ckms_lab.model import ModelError, build_environment, default_flows, render_nftables


def test_lab_model_has_every_role_and_segment():
    env = build_environment("lab", "lab")
    assert {h.role for h in env.hosts} == {"router", "ca", "terminal", "admin", "rogue"}
    assert [s.name for s in env.segments] == ["mgmt", "ca", "lan", "vpn"]
    # every host is on the management network, the router joins CA segment and factory LAN
    assert all("mgmt" in h.addresses for h in env.hosts)
    assert set(env.host("router").addresses) == {"mgmt", "ca", "lan", "vpn"}
    assert set(env.host("terminal").addresses) == {"mgmt", "lan"}
    assert set(env.host("rogue").addresses) == {"mgmt", "lan"}
    assert set(env.host("ca1").addresses) == {"mgmt", "ca"}
    for h in env.hosts:
        for seg, addr in h.addresses.items():
            assert ipaddress.ip_address(addr) in ipaddress.ip_network(env.segment(seg).cidr)


def test_scale_out_adds_second_ca_and_database_flow():
    env = build_environment("onprem", "onprem", ca_count=2, with_db=True)
    assert [h.name for h in env.hosts_with_role("ca")] == ["ca1", "ca2"]
    db = next(f for f in env.flows if f.name == "ca-db")
    assert db.port == 5432 and not db.routed
    assert set(db.src_cidrs) == {"10.231.10.10/32", "10.231.10.11/32"}


def test_ten_ca_nodes_fit_the_ca_segment_and_an_eleventh_is_refused():
    env = build_environment("onprem", "onprem", ca_count=10, with_db=True)
    cas = env.hosts_with_role("ca")
    addrs = [h.addresses["ca"] for h in cas] + [env.host("db").addresses["ca"]]
    assert len(cas) == 10 and len(set(addrs)) == 11
    est = next(f for f in env.flows if f.name == "est")
    assert len(est.dst_cidrs) == 10
    with pytest.raises(ModelError, match="1 to 10"):
        build_environment("onprem", "onprem", ca_count=11)


def test_flows_are_exactly_the_guidance_list():
    env = build_environment("lab", "lab")
    got = {(f.name, f.proto, f.port) for f in env.flows}
    assert got == {("est", "tcp", 8443), ("admin-ssh", "tcp", 22), ("ntp", "udp", 123), ("crl", "tcp", 8080)}
    est = next(f for f in env.flows if f.name == "est")
    assert est.src_cidrs == ("10.231.20.10/32",) and est.dst_cidrs == ("10.231.10.10/32",)
    admin = next(f for f in env.flows if f.name == "admin-ssh")
    assert admin.src_cidrs == ("10.231.20.20/32", "10.231.30.0/24")  # registered address or VPN
    # the rogue host appears in no flow
    assert not any("10.231.20.66/32" in f.src_cidrs + f.dst_cidrs for f in env.flows)


def test_hub_sits_on_its_own_segment_and_only_the_terminal_reaches_it():
    env = build_environment("lab", "lab", with_hub=True)
    assert [s.name for s in env.segments] == ["mgmt", "ca", "lan", "vpn", "iot"]
    assert env.host_segments() == ("ca", "lan", "iot")
    hub = env.host("hub")
    assert set(hub.addresses) == {"mgmt", "iot"} and hub.data_address == "10.231.40.10"
    assert env.host("router").addresses["iot"] == env.segment("iot").gateway == "10.231.40.1"
    got = {(f.name, f.port): (f.src_cidrs, f.dst_cidrs) for f in env.flows if "hub" in f.src + f.dst}
    term = ("10.231.20.10/32",)
    assert got == {
        ("crl-relay", 8444): (term, ("10.231.40.10/32",)),
        ("device-line-test", 8443): (term, ("10.231.40.10/32",)),
    }
    # A.46: nothing of the hub's reaches the CA; the CRL flow is the terminal's alone
    crl = next(f for f in env.flows if f.name == "crl")
    assert crl.src == ("terminal",)
    assert not any(c.startswith("10.231.40.") for f in env.flows if "ca" in f.dst for c in f.src_cidrs)


def test_without_a_hub_there_is_no_iot_segment():
    env = build_environment("onprem", "onprem")
    assert "iot" not in [s.name for s in env.segments] and env.host_segments() == ("ca", "lan")
    assert not any(f.name in ("crl-relay", "device-line-test") for f in env.flows)


def test_unknown_endpoint_and_bad_port_are_rejected():
    flows = default_flows() + [{"name": "x", "src": ["nobody"], "dst": ["ca"], "proto": "tcp", "port": 1}]
    with pytest.raises(ModelError, match="unknown endpoint"):
        build_environment("lab", "lab", flows=flows)
    with pytest.raises(ModelError, match="bad port"):
        build_environment("lab", "lab", flows=[{**default_flows()[0], "port": 70000}])


def test_nftables_allow_list_is_default_drop_with_one_rule_per_routed_flow():
    rules = render_nftables(build_environment("lab", "lab", with_db=True))
    assert "policy drop;" in rules
    assert rules.count("ct state new accept") == 4  # ca-db stays inside the CA segment
    assert "ip saddr { 10.231.20.10/32 } ip daddr { 10.231.10.10/32 } tcp dport 8443" in rules
    assert "0.0.0.0/0" not in rules
