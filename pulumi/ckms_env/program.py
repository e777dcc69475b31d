"""The stack program: read ``ckms:*`` config, build the model, pick the backend, export outputs."""

from __future__ import annotations

import pulumi
from ckms_lab.model import Environment, build_environment

from .component import Backend, CkmsEnvironment


def environment_from_config() -> Environment:
    cfg = pulumi.Config("ckms")
    stack = pulumi.get_stack()
    kind = cfg.get("kind") or stack.split("-")[0]
    return build_environment(
        name=stack,
        kind=kind,
        network=cfg.get("network") or "10.231.0.0/16",
        ca_count=cfg.get_int("caCount") or 1,
        with_db=cfg.get_bool("withDb") or False,
        with_hub=cfg.get_bool("withHub") or False,
        with_rogue=cfg.get_bool("withRogue") if cfg.get("withRogue") is not None else kind == "lab",
        flows=cfg.get_object("flows"),
        time_sources=cfg.get_object("timeSources"),
    )


def backend_for(env: Environment) -> Backend:
    if env.kind == "lab":
        from .lab import LabBackend

        cfg = pulumi.Config("ckms")
        return LabBackend(lab=cfg.get("labName") or "lab", ca_host=cfg.get("caHost") or "container")
    if env.kind == "onprem":
        from .onprem import OnpremBackend

        return OnpremBackend()
    from .aws import AwsBackend

    return AwsBackend()


def run() -> CkmsEnvironment:
    env = environment_from_config()
    component = CkmsEnvironment("ckms", env, backend_for(env))
    pulumi.export("kind", env.kind)
    pulumi.export("controller_address", env.controller_address)
    pulumi.export("hosts", component.hosts)
    pulumi.export("flows", component.flows)
    pulumi.export("segments", component.segments)
    pulumi.export("time_sources", list(env.time_sources))
    return component
