"""Pulumi mock harness: run the real component with ``pulumi.runtime.set_mocks`` (no CLI needed)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

PULUMI_DIR = Path(__file__).resolve().parents[2] / "pulumi"
if str(PULUMI_DIR) not in sys.path:
    sys.path.insert(0, str(PULUMI_DIR))

from ckms_env.policy import Declared  # noqa: E402

import pulumi  # noqa: E402


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource the program declares, as the engine would see it."""

    def __init__(self) -> None:
        self.resources: list[Declared] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(Declared(args.typ, args.name, dict(args.inputs)))
        outs = dict(args.inputs)
        if args.typ.startswith("pulumi-python:dynamic/ckms:LabHost"):
            outs.update(
                mgmt_address=args.inputs["nics"][0]["address"].split("/")[0],
                host_key="ssh-ed25519 AAAAmock",
                netns=f"ckms-{args.inputs['lab']}-{args.name}",
            )
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


@pytest.fixture
def deploy():
    """``deploy(stack, config) -> (mocks, outputs)``: run the stack program under mocks."""

    def _deploy(stack: str, config: dict[str, str] | None = None):
        """Config: the committed pulumi/stacks/<stack>.yaml, overridden by ``config``."""
        committed = yaml.safe_load((PULUMI_DIR / "stacks" / f"{stack}.yaml").read_text())["config"]
        config = {**{k.removeprefix("ckms:"): str(v) for k, v in committed.items()}, **(config or {})}
        mocks = RecordingMocks()
        # Pulumi's mock runtime uses the thread's current event loop; a test that ran asyncio.run()
        # before leaves none behind, so give each deployment a fresh one.
        asyncio.set_event_loop(asyncio.new_event_loop())
        pulumi.runtime.set_mocks(mocks, project="ckms", stack=stack, preview=False)
        pulumi.runtime.set_all_config({f"ckms:{k}": v for k, v in (config or {}).items()})
        from ckms_env import program

        result: dict = {}

        @pulumi.runtime.test
        def run():
            comp = program.run()
            return comp.hosts.apply(lambda h: result.update(hosts=h, flows=comp.flows, model=comp.model))

        run()
        return mocks, result

    yield _deploy
    pulumi.runtime.set_all_config({})
