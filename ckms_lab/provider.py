"""Pulumi dynamic provider for lab segments and hosts, backed by ``ckms_lab.hosts``.

Why a dynamic provider: the lab stack's resources are local nspawn machines, which no published
provider manages; a dynamic provider lets ``pulumi up``/``destroy`` own their life cycle with the same
driver Molecule uses. Every input change replaces the resource (delete first: names are reused), and
``read`` reports a host that is no longer running as gone, so ``pulumi up --refresh`` recreates it
after a reboot of the machine.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider

import pulumi
from ckms_lab import hosts


def _inputs(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if not k.startswith("__") and k not in _OUTPUT_KEYS}


_OUTPUT_KEYS = {"netns", "bridge", "pid", "mgmt_address", "addresses", "host_key", "state_dir"}


class _Replacing(ResourceProvider):
    serialize_as_secret_always = False

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = _inputs(olds), _inputs(news)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)


class SegmentProvider(_Replacing):
    """Creates an L2 segment (a bridge in its own netns, or the controller-side management bridge)."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = hosts.SegmentSpec(props["lab"], props["name"], props.get("controller_address") or None)
        out = hosts.create_segment(spec)
        return CreateResult(f"{spec.lab}/{spec.name}", {**props, **out})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        try:
            hosts._segment_for(props["lab"], props["name"])
        except hosts.LabError:
            return ReadResult(None, {})  # gone: refresh drops it, the next up recreates it
        return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        spec = hosts.SegmentSpec(props["lab"], props["name"], props.get("controller_address") or None)
        hosts.destroy_segment(spec)


class HostProvider(_Replacing):
    """Creates and boots a lab host; deletes it without leaving anything behind."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = hosts.HostSpec.from_dict(props)
        info = hosts.create_host(spec)
        outs = {
            **_inputs(props),
            "netns": info.netns,
            "pid": info.pid,
            "mgmt_address": info.mgmt_address,
            "addresses": info.addresses,
            "host_key": info.host_key,
            "state_dir": info.state_dir,
        }
        return CreateResult(f"{spec.lab}/{spec.name}", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        running = {(h["lab"], h["name"]) for h in hosts.list_hosts(props.get("lab")) if h["running"]}
        if (props.get("lab"), props.get("name")) not in running:
            return ReadResult(None, {})
        return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        hosts.destroy_host(props["lab"], props["name"])


class LabSegment(Resource, module="ckms", name="LabSegment"):
    """A lab L2 segment."""

    netns: pulumi.Output[str]
    bridge: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SegmentProvider(), name, {**props, "netns": None, "bridge": None}, opts)


class LabHost(Resource, module="ckms", name="LabHost"):
    """A lab host: a systemd-nspawn machine, or a QEMU VM for ``kind: vm`` (``ckms_lab.vm_host``)."""

    mgmt_address: pulumi.Output[str]
    host_key: pulumi.Output[str]
    netns: pulumi.Output[str]
    pid: pulumi.Output[int]
    addresses: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        outs = dict.fromkeys(("netns", "pid", "mgmt_address", "addresses", "host_key", "state_dir"))
        super().__init__(HostProvider(), name, {**props, **outs}, opts)
