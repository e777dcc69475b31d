"""AWS backend: VPC, one private subnet per segment, route tables, security groups from the flows.

Resources use pulumi-aws's type tokens and property names (``aws:ec2/securityGroup:SecurityGroup``
with ``ingress[].cidrBlocks`` etc.), declared as plain ``CustomResource``s because the pulumi_aws SDK
is not a dependency of this project (not in the pinned ``infra`` extra); with the aws provider plugin
installed they are the real resources. In AWS the router's filtering is done by security groups
and route tables, so there is no router instance and no rogue host.
"""

from __future__ import annotations

import ipaddress

import pulumi
from ckms_lab.model import MANAGEMENT, Environment

from .firewall import egress_for_role, ingress_for_role, management_ingress


class _Res(pulumi.CustomResource):
    def __init__(self, token: str, name: str, props: dict, opts: pulumi.ResourceOptions) -> None:
        super().__init__(token, name, props, opts)


def _rules(rules) -> list[dict]:
    return [
        {
            "description": r.flow,
            "protocol": r.proto,
            "fromPort": r.port,
            "toPort": r.port,
            "cidrBlocks": list(r.sources),
        }
        for r in rules
    ]


class AwsBackend:
    def __init__(self, ami: str = "ami-debian-12", instance_type: str = "t3.small") -> None:
        self.ami = ami
        self.instance_type = instance_type

    def build(self, env: Environment, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output]:
        tags = {"ckms:environment": env.name}
        vpc = _Res(
            "aws:ec2/vpc:Vpc",
            "vpc",
            {
                "cidrBlock": str(ipaddress.ip_network(env.segment(MANAGEMENT).cidr).supernet(new_prefix=16)),
                "enableDnsSupport": True,
                "enableDnsHostnames": False,
                "tags": tags,
            },
            opts,
        )
        subnets, tables = {}, {}
        for seg in (MANAGEMENT, *env.host_segments()):
            subnets[seg] = _Res(
                "aws:ec2/subnet:Subnet",
                f"subnet-{seg}",
                {
                    "vpcId": vpc.id,
                    "cidrBlock": env.segment(seg).cidr,
                    "mapPublicIpOnLaunch": False,
                    "tags": {**tags, "ckms:segment": seg},
                },
                opts,
            )
            # Only local VPC routing: no internet gateway, no NAT, no default route anywhere.
            tables[seg] = _Res(
                "aws:ec2/routeTable:RouteTable",
                f"rt-{seg}",
                {"vpcId": vpc.id, "routes": [], "tags": {**tags, "ckms:segment": seg}},
                opts,
            )
            _Res(
                "aws:ec2/routeTableAssociation:RouteTableAssociation",
                f"rta-{seg}",
                {"subnetId": subnets[seg].id, "routeTableId": tables[seg].id},
                opts,
            )
        groups = {}
        roles = sorted({h.role for h in env.hosts if h.role not in ("router", "rogue")})
        for role in roles:
            groups[role] = _Res(
                "aws:ec2/securityGroup:SecurityGroup",
                f"sg-{role}",
                {
                    "vpcId": vpc.id,
                    "description": f"ckms {role}: allowed flows only",
                    "ingress": _rules([*ingress_for_role(env, role), management_ingress(env)]),
                    "egress": _rules(egress_for_role(env, role)),
                    "tags": {**tags, "ckms:role": role},
                },
                opts,
            )
        out: dict[str, pulumi.Output] = {}
        for host in env.hosts:
            if host.role in ("router", "rogue"):
                continue
            seg = host.data_segments[0]
            _Res(
                "aws:ec2/instance:Instance",
                f"instance-{host.name}",
                {
                    "ami": self.ami,
                    "instanceType": self.instance_type,
                    "subnetId": subnets[seg].id,
                    "privateIp": host.address(seg),
                    "associatePublicIpAddress": False,
                    "vpcSecurityGroupIds": [groups[host.role].id],
                    "metadataOptions": {"httpTokens": "required"},
                    "tags": {**tags, "Name": host.name, "ckms:role": host.role},
                },
                opts,
            )
            out[host.name] = pulumi.Output.from_input(
                {
                    "name": host.name,
                    "role": host.role,
                    "addresses": host.addresses,
                    "mgmt_address": host.address(MANAGEMENT),
                }
            )
        return out
