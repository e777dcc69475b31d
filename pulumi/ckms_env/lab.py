"""Lab backend: real local hosts through the ckms_lab dynamic provider."""

from __future__ import annotations

import pulumi
from ckms_lab import paths
from ckms_lab.model import MANAGEMENT, Environment
from ckms_lab.provider import LabHost, LabSegment


class LabBackend:
    """Segment ``mgmt`` (controller bridge) and each data segment the model uses (``ca``, ``lan``, ``iot``:
    switch namespaces); one local host per modelled host. ``ca_host="vm"`` makes the CA hosts QEMU
    virtual machines (Secure Boot, own kernel: ``ckms_lab.vm_host``) on the same segments, so kernel
    audit, AppArmor enforcement, runtime sysctls and secure boot are observed for real (``make lab
    LAB_CA=vm``); every other host stays a container."""

    def __init__(self, lab: str = "lab", ca_host: str = "container") -> None:
        if ca_host not in ("container", "vm"):
            raise ValueError(f"ckms:caHost must be container or vm, not {ca_host!r}")
        self.lab = lab
        self.ca_host = ca_host

    def build(self, env: Environment, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output]:
        segments = {}
        for seg in (MANAGEMENT, *env.host_segments()):
            props = {
                "lab": self.lab,
                "name": seg,
                "controller_address": env.controller_address if seg == MANAGEMENT else "",
            }
            segments[seg] = LabSegment(f"segment-{seg}", props, pulumi.ResourceOptions.merge(opts, None))
        prefix = {s.name: s.cidr.split("/")[1] for s in env.segments}
        out: dict[str, pulumi.Output] = {}
        for host in env.hosts:
            nics = [
                {
                    "ifname": "mgmt0",
                    "segment": MANAGEMENT,
                    "address": f"{host.address(MANAGEMENT)}/{prefix[MANAGEMENT]}",
                }
            ]
            for i, seg in enumerate(host.data_segments):
                gw = None if host.role == "router" else env.segment(seg).gateway
                nics.append(
                    {
                        "ifname": f"eth{i}",
                        "segment": seg,
                        "address": f"{host.address(seg)}/{prefix[seg]}",
                        "gateway": gw,
                    }
                )
            vm = host.role == "ca" and self.ca_host == "vm"
            props = {
                "lab": self.lab,
                "name": host.name,
                "role": host.role,
                "kind": "vm" if vm else "container",
                "nics": nics,
                "authorized_key": paths.ssh_public_key(),
                "ip_forward": host.role == "router",
                "image": str(paths.vm_image() if vm else paths.golden_rootfs()),
                "image_stamp": paths.vm_stamp() if vm else paths.golden_stamp(),
            }
            deps = [segments[s] for s in (MANAGEMENT, *host.addresses) if s in segments]
            res = LabHost(
                f"host-{host.name}",
                props,
                pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=deps)),
            )
            out[host.name] = pulumi.Output.all(
                mgmt_address=res.mgmt_address,
                host_key=res.host_key,
                netns=res.netns,
            ).apply(
                lambda o, h=host, k=props["kind"]: {
                    "name": h.name,
                    "role": h.role,
                    "kind": k,
                    "addresses": h.addresses,
                    **o,
                }
            )
        return out
