"""Per-host ingress rules derived from the flow list (shared by the onprem and aws backends)."""

from __future__ import annotations

from dataclasses import dataclass

from ckms_lab.model import MANAGEMENT, Environment


@dataclass(frozen=True)
class Ingress:
    flow: str
    proto: str
    port: int
    sources: tuple[str, ...]


def ingress_for_role(env: Environment, role: str) -> list[Ingress]:
    """Every flow whose destination is ``role`` becomes one ingress rule; nothing else is open."""
    return [Ingress(f.name, f.proto, f.port, f.src_cidrs) for f in env.flows if role in f.dst and f.src_cidrs]


def egress_for_role(env: Environment, role: str) -> list[Ingress]:
    """Flows whose source is ``role``: the only traffic the host may start."""
    return [Ingress(f.name, f.proto, f.port, f.dst_cidrs) for f in env.flows if role in f.src and f.dst_cidrs]


def management_ingress(env: Environment) -> Ingress:
    """The controller (management network) reaches every host's SSH; only from its own address."""
    return Ingress("management-ssh", "tcp", 22, (env.controller_address.split("/")[0] + "/32",))


__all__ = ["Ingress", "ingress_for_role", "egress_for_role", "management_ingress", "MANAGEMENT"]
