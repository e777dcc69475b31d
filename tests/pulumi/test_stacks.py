"""The onprem / aws / lab stacks under Pulumi mocks, and the network policy checks.

Each stack must pass the policy; each must *fail* it when a flow is widened to anywhere or the CA is
opened on another port (the tests that prove the checks bite).
"""

from __future__ import annotations

import pytest
from ckms_env.policy import check

from ckms_lab.model import default_flows


def _types(mocks) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in mocks.resources:
        counts[r.type] = counts.get(r.type, 0) + 1
    return counts


def test_aws_stack_resources_follow_the_flows(deploy):
    mocks, out = deploy("aws")
    t = _types(mocks)
    assert t["aws:ec2/vpc:Vpc"] == 1 and t["aws:ec2/subnet:Subnet"] == 3
    assert t["aws:ec2/instance:Instance"] == 3  # ca1, terminal, admin (router = SGs/routes, no rogue)
    assert "aws:ec2/internetGateway:InternetGateway" not in t
    sg = {r.name: r.inputs for r in mocks.resources if r.type == "aws:ec2/securityGroup:SecurityGroup"}
    ca_in = {(r["protocol"], r["fromPort"], tuple(r["cidrBlocks"])) for r in sg["sg-ca"]["ingress"]}
    assert ca_in == {
        ("tcp", 8443, ("10.231.20.10/32",)),
        ("tcp", 22, ("10.231.20.20/32", "10.231.30.0/24")),
        ("tcp", 8080, ("10.231.20.10/32",)),
        ("tcp", 22, ("10.231.0.1/32",)),
    }
    assert {(r["protocol"], r["toPort"]) for r in sg["sg-ca"]["egress"]} == {("udp", 123)}
    assert sg["sg-terminal"]["ingress"] == [r for r in sg["sg-terminal"]["ingress"] if r["fromPort"] == 22]
    assert {f["name"] for f in out["flows"]} == {"est", "admin-ssh", "ntp", "crl"}
    assert check(mocks.resources) == []


def test_onprem_scale_out_stack(deploy):
    mocks, out = deploy("onprem")
    t = _types(mocks)
    assert t["libvirt:index/network:Network"] == 3
    assert t["libvirt:index/domain:Domain"] == 6  # router, ca1, ca2, db, terminal, admin
    nets = {r.name: r.inputs for r in mocks.resources if r.type == "libvirt:index/network:Network"}
    assert all(n["mode"] == "none" for n in nets.values())
    fw = {r.name: r.inputs for r in mocks.resources if r.type == "ckms:onprem:HostFirewall"}
    assert {(x["proto"], x["port"]) for x in fw["fw-ca2"]["ingress"]} == {
        ("tcp", 8443),
        ("tcp", 22),
        ("tcp", 8080),
    }
    assert {(x["proto"], x["port"]) for x in fw["fw-db"]["ingress"]} == {("tcp", 5432), ("tcp", 22)}
    router = next(r for r in mocks.resources if r.name == "init-router")
    assert "policy drop;" in router.inputs["userData"] and "dport 8443" in router.inputs["userData"]
    assert sorted(out["hosts"]) == ["admin", "ca1", "ca2", "db", "router", "terminal"]
    assert check(mocks.resources) == []


def test_lab_stack_wires_hosts_as_the_model_says(deploy):
    mocks, out = deploy("lab")
    hosts = {r.inputs["name"]: r.inputs for r in mocks.resources if r.type.endswith("ckms:LabHost")}
    segs = {r.inputs["name"]: r.inputs for r in mocks.resources if r.type.endswith("ckms:LabSegment")}
    assert set(segs) == {"mgmt", "ca", "lan", "iot"} and segs["mgmt"]["controller_address"] == "10.231.0.1/24"
    assert set(hosts) == {"router", "ca1", "terminal", "admin", "rogue", "hub"}
    nic_segs = {
        n: [(x["ifname"], x["segment"], x.get("gateway")) for x in h["nics"]] for n, h in hosts.items()
    }
    assert nic_segs["router"] == [
        ("mgmt0", "mgmt", None),
        ("eth0", "ca", None),
        ("eth1", "lan", None),
        ("eth2", "iot", None),
    ]
    assert nic_segs["terminal"] == [("mgmt0", "mgmt", None), ("eth0", "lan", "10.231.20.1")]
    assert nic_segs["rogue"] == [("mgmt0", "mgmt", None), ("eth0", "lan", "10.231.20.1")]
    assert nic_segs["ca1"] == [("mgmt0", "mgmt", None), ("eth0", "ca", "10.231.10.1")]
    # the toy model's hub sits on a segment of its own, reached through the router
    assert nic_segs["hub"] == [("mgmt0", "mgmt", None), ("eth0", "iot", "10.231.40.1")]
    assert hosts["router"]["ip_forward"] and not hosts["ca1"]["ip_forward"]
    assert out["hosts"]["ca1"]["mgmt_address"] == "10.231.0.11"
    # A.46: the CA talks to the terminal only; the hub gets its CRLs from the terminal's relay
    flows = {f["name"]: f for f in out["flows"]}
    assert {"crl-relay", "device-line-test"} <= set(flows)
    assert not any("hub" in f["src"] and "ca" in f["dst"] for f in out["flows"])
    assert list(flows["crl-relay"]["dst_cidrs"]) == ["10.231.40.10/32"]
    # the default lab's hosts are all containers on the golden root filesystem
    assert {h["kind"] for h in hosts.values()} == {"container"}
    assert out["hosts"]["ca1"]["kind"] == "container"


def test_labvm_stack_makes_only_the_ca_host_a_vm_on_the_same_segments(deploy):
    """make lab LAB_CA=vm (issue 18): ca1 boots the Secure Boot VM disk; its NICs are those of the
    container variant (its own addresses), every other host stays a container."""
    from ckms_lab import paths

    mocks, out = deploy("labvm")
    hosts = {r.inputs["name"]: r.inputs for r in mocks.resources if r.type.endswith("ckms:LabHost")}
    assert {n: h["kind"] for n, h in hosts.items()} == {
        "router": "container",
        "ca1": "vm",
        "terminal": "container",
        "admin": "container",
        "rogue": "container",
        "hub": "container",
    }
    assert hosts["ca1"]["image"] == str(paths.vm_image()) and hosts["router"]["image"] == str(
        paths.golden_rootfs()
    )
    assert [(x["ifname"], x["segment"], x.get("gateway")) for x in hosts["ca1"]["nics"]] == [
        ("mgmt0", "mgmt", None),
        ("eth0", "ca", "10.243.10.1"),
    ]
    assert out["hosts"]["ca1"]["kind"] == "vm" and out["hosts"]["ca1"]["mgmt_address"] == "10.243.0.11"


def test_unknown_ca_host_kind_is_refused(deploy):
    with pytest.raises(Exception, match="caHost must be container or vm"):
        deploy("lab", {"caHost": "bare-metal"})


WIDENED = [
    pytest.param(lambda f: {**f, "src": ["anywhere"]} if f["name"] == "est" else f, id="est-from-anywhere"),
    pytest.param(
        lambda f: {**f, "src": ["anywhere"]} if f["name"] == "admin-ssh" else f, id="ssh-from-anywhere"
    ),
    pytest.param(lambda f: {**f, "port": 5432} if f["name"] == "crl" else f, id="ca-extra-port"),
]


@pytest.mark.parametrize("kind", ["aws", "onprem"])
@pytest.mark.parametrize("widen", WIDENED)
def test_policy_fails_when_a_flow_is_widened(deploy, kind, widen):
    import json

    flows = [widen(f) for f in default_flows()]
    mocks, _ = deploy(kind, {"flows": json.dumps(flows)})
    violations = check(mocks.resources)
    assert violations, "a widened flow must violate the policy"


def test_policy_catches_an_internet_route_from_the_ca_segment():
    from ckms_env.policy import Declared

    bad = [
        Declared(
            "aws:ec2/routeTable:RouteTable",
            "rt-ca",
            {"routes": [{"cidrBlock": "0.0.0.0/0", "gatewayId": "igw-1"}], "tags": {"ckms:segment": "ca"}},
        ),
        Declared("libvirt:index/network:Network", "net-ca", {"mode": "nat"}),
    ]
    assert len(check(bad)) == 2
