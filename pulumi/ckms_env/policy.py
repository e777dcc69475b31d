"""Policy checks over the resources a stack declares (run against Pulumi mocks in the tests).

The three rules of the CA's network design, independent of the backend:

1. no ingress from anywhere (0.0.0.0/0, ::/0) on any security group, host firewall or router rule;
2. no internet route from the CA segment (no default route, NAT or routed libvirt network);
3. CA hosts are reachable only on the ports of the *reference* flow list (the guidance's), whatever
   the stack's own (possibly edited) flow list says.

Why check resources and not the model: a backend bug or a hand-edited stack config must be caught
where it would take effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckms_lab.model import ANYWHERE, default_flows

WIDE = {ANYWHERE, "::/0"}


@dataclass(frozen=True)
class Declared:
    """One resource as registered with the engine: type token, logical name, inputs."""

    type: str
    name: str
    inputs: dict[str, Any]


def allowed_ca_ports() -> set[tuple[str, int]]:
    return {(f["proto"], f["port"]) for f in default_flows(with_db=True, with_hub=True) if "ca" in f["dst"]}


def check(resources: list[Declared]) -> list[str]:
    """Return every violation found (empty list: the stack passes)."""
    v: list[str] = []
    by_id = {r.name: r for r in resources}
    allowed = allowed_ca_ports()
    for r in resources:
        if r.type == "aws:ec2/securityGroup:SecurityGroup":
            for rule in r.inputs.get("ingress", []):
                wide = WIDE & set(rule.get("cidrBlocks", []) + rule.get("ipv6CidrBlocks", []))
                if wide:
                    v.append(f"{r.name}: ingress {rule.get('description')} from {sorted(wide)}")
            if r.inputs.get("tags", {}).get("ckms:role") == "ca":
                for rule in r.inputs.get("ingress", []):
                    for port in range(int(rule["fromPort"]), int(rule["toPort"]) + 1):
                        if (rule["protocol"], port) not in allowed:
                            v.append(
                                f"{r.name}: CA reachable on {rule['protocol']}/{port} ({rule.get('description')})"
                            )
        elif r.type == "ckms:onprem:HostFirewall":
            if r.inputs.get("defaultPolicy") != "drop":
                v.append(f"{r.name}: host firewall default policy is not drop")
            for rule in r.inputs.get("ingress", []):
                wide = WIDE & set(rule.get("sources", []))
                if wide:
                    v.append(f"{r.name}: ingress {rule['flow']} from {sorted(wide)}")
                if r.inputs.get("role") == "ca" and (rule["proto"], int(rule["port"])) not in allowed:
                    v.append(f"{r.name}: CA reachable on {rule['proto']}/{rule['port']} ({rule['flow']})")
        elif r.type == "libvirt:index/cloudInitDisk:CloudInitDisk":
            if any(w in r.inputs.get("userData", "") for w in WIDE):
                v.append(
                    f"{r.name}: router rules mention {sorted(w for w in WIDE if w in r.inputs['userData'])}"
                )
        elif r.type == "libvirt:index/network:Network":
            if r.name.endswith("-ca") and r.inputs.get("mode") not in ("none", "isolated"):
                v.append(f"{r.name}: CA segment network mode {r.inputs.get('mode')!r} routes outside")
        elif r.type == "aws:ec2/routeTable:RouteTable":
            for route in r.inputs.get("routes", []):
                if route.get("cidrBlock") in WIDE or route.get("ipv6CidrBlock") in WIDE:
                    seg = r.inputs.get("tags", {}).get("ckms:segment")
                    if seg == "ca":
                        v.append(f"{r.name}: default route from the CA segment via {route}")
        elif r.type in ("aws:ec2/internetGateway:InternetGateway", "aws:ec2/natGateway:NatGateway"):
            v.append(f"{r.name}: {r.type} present (the CA environment has no internet path)")
        elif r.type == "aws:ec2/instance:Instance":
            if r.inputs.get("associatePublicIpAddress"):
                v.append(f"{r.name}: public IP address")
    del by_id
    return v
