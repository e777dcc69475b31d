"""``CkmsEnvironment``: one component, several backends.

The component owns the model (segments, hosts, allowed flows) and asks a backend to realise it:
``lab`` makes local nspawn hosts, ``onprem`` libvirt networks and domains, ``aws`` a VPC with
security groups. Every backend derives its filtering from ``Environment.flows`` and nothing else,
so widening a flow is visible in one place and caught by the policy checks.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Protocol

import pulumi
from ckms_lab.model import Environment


class Backend(Protocol):
    """Realises an environment; returns per-host outputs (name -> dict with at least mgmt_address)."""

    def build(self, env: Environment, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output]: ...


class CkmsEnvironment(pulumi.ComponentResource):
    """A CKMS environment: CA segment, factory LAN, management network, hosts and allowed flows."""

    hosts: pulumi.Output[dict]
    flows: list[dict]
    segments: list[dict]

    def __init__(
        self, name: str, env: Environment, backend: Backend, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ckms:index:CkmsEnvironment", name, None, opts)
        self.model = env
        host_outputs = backend.build(env, pulumi.ResourceOptions(parent=self))
        self.hosts = pulumi.Output.all(**host_outputs) if host_outputs else pulumi.Output.from_input({})
        self.flows = [asdict(f) for f in env.flows]
        self.segments = [asdict(s) for s in env.segments]
        self.register_outputs({"hosts": self.hosts, "flows": self.flows, "segments": self.segments})
