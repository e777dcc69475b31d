"""On-prem backend: libvirt networks and domains.

The resources use pulumi-libvirt's type tokens and property names (``libvirt:index/network:Network``,
``libvirt:index/domain:Domain``, ...), declared here as plain ``CustomResource``s because the
pulumi_libvirt SDK is not a dependency of this project (it is not in the pinned ``infra`` extra);
with the libvirt provider plugin installed they are the real resources. pulumi-libvirt has no
firewall resource, so the CA hosts' host firewall and the router's allow-list are modelled as
``ckms:onprem:HostFirewall`` (rendered by the router / host-firewall roles) and the router's
cloud-init carries the nftables flow rules.
"""

from __future__ import annotations

import json

import pulumi
from ckms_lab.model import MANAGEMENT, Environment, render_nftables

from .firewall import ingress_for_role, management_ingress


class _Res(pulumi.CustomResource):
    def __init__(self, token: str, name: str, props: dict, opts: pulumi.ResourceOptions) -> None:
        super().__init__(token, name, props, opts)


class OnpremBackend:
    """Isolated libvirt networks per segment (no NAT, no route to the outside); one domain per host."""

    def __init__(
        self,
        base_image: str = "/var/lib/libvirt/images/debian-12-genericcloud-amd64.qcow2",
        pool: str = "default",
    ) -> None:
        self.base_image = base_image
        self.pool = pool

    def build(self, env: Environment, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output]:
        networks = {}
        for seg in (MANAGEMENT, *env.host_segments()):
            networks[seg] = _Res(
                "libvirt:index/network:Network",
                f"net-{seg}",
                {
                    "name": f"ckms-{env.name}-{seg}",
                    "mode": "none",  # isolated: neither NAT nor routed to the outside world
                    "addresses": [env.segment(seg).cidr],
                    "autostart": True,
                    "dhcp": {"enabled": False},
                },
                opts,
            )
        base = _Res(
            "libvirt:index/volume:Volume",
            "base-image",
            {
                "name": f"ckms-{env.name}-base.qcow2",
                "pool": self.pool,
                "source": self.base_image,
                "format": "qcow2",
            },
            opts,
        )
        out: dict[str, pulumi.Output] = {}
        for host in env.hosts:
            disk = _Res(
                "libvirt:index/volume:Volume",
                f"disk-{host.name}",
                {
                    "name": f"ckms-{env.name}-{host.name}.qcow2",
                    "pool": self.pool,
                    "baseVolumeId": base.id,
                },
                opts,
            )
            user_data = {"hostname": host.name, "ckms_role": host.role}
            if host.role == "router":
                user_data["write_files"] = [
                    {"path": "/etc/nftables.d/ckms-flows.nft", "content": render_nftables(env)}
                ]
            init = _Res(
                "libvirt:index/cloudInitDisk:CloudInitDisk",
                f"init-{host.name}",
                {
                    "name": f"ckms-{env.name}-{host.name}-init.iso",
                    "pool": self.pool,
                    "userData": "#cloud-config\n" + json.dumps(user_data),
                },
                opts,
            )
            nics = [
                {"networkId": networks[seg].id, "addresses": [addr]}
                for seg, addr in host.addresses.items()
                if seg in networks
            ]
            domain = _Res(
                "libvirt:index/domain:Domain",
                f"domain-{host.name}",
                {
                    "name": f"ckms-{env.name}-{host.name}",
                    "memory": 2048 if host.role == "ca" else 1024,
                    "vcpu": 2,
                    "disks": [{"volumeId": disk.id}],
                    "cloudinit": init.id,
                    "networkInterfaces": nics,
                },
                opts,
            )
            rules = [
                {"flow": r.flow, "proto": r.proto, "port": r.port, "sources": list(r.sources)}
                for r in (*ingress_for_role(env, host.role), management_ingress(env))
            ]
            _Res(
                "ckms:onprem:HostFirewall",
                f"fw-{host.name}",
                {
                    "host": host.name,
                    "role": host.role,
                    "domainId": domain.id,
                    "defaultPolicy": "drop",
                    "ingress": rules,
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
