"""A genuine fault inside ckms (issue 11 item 5): the one way to a 500. The client gets an error naming a fault
ID and nothing of the fault; the trail gets a ``daemon.fault`` record; the administrators get an alert.

A worker's real runtime (SoftHSM token, database writer, alert configuration) serves a real aiohttp
application behind the daemon's fault boundary; the fault is a handler that raises, as a bug would.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pkcs11
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ckms_app.config import load_config
from ckms_app.daemon import guard_routes
from ckms_app.daemon.runtime import RUNTIME, open_runtime
from ckms_app.errors import BadRequest

from .conftest import init_home


async def _bug(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def _refusal_left_unrendered(request: web.Request) -> web.Response:
    raise BadRequest("a refusal the handler forgot to render")


def test_internal_fault_is_500_audited_and_alerted(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "home")
    alerts = tmp_path / "alerts.jsonl"
    config_file = ca.home / "ckms.toml"
    config_file.write_text(
        config_file.read_text() + f'\n[alerts]\nsyslog = false\ncommand = ["sh", "-c", "cat >> {alerts}"]\n'
    )
    config = load_config(ca.home)
    # SoftHSM reads SOFTHSM2_CONF at C_Initialize only, once per process: an earlier in-process test (another
    # home's token, also labelled ckms-ca) may have initialised it. Start again from this home's configuration.
    assert config.token.softhsm_conf is not None
    os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
    pkcs11.lib(config.token.module).reinitialize()

    async def body() -> None:
        rt = await open_runtime(config)
        try:
            app = web.Application(middlewares=[guard_routes.fault_middleware])
            app[RUNTIME] = rt
            app.router.add_get("/api/v1/broken", _bug)
            app.router.add_post("/.well-known/est/broken", _bug)
            app.router.add_get("/api/v1/unrendered", _refusal_left_unrendered)
            async with TestClient(TestServer(app)) as client:
                resp = await client.get("/api/v1/broken")
                doc = await resp.json()
                assert resp.status == 500 and doc["error"] == "internal_error", doc
                assert "fault" in doc["message"] and "secret" not in doc["message"]
                resp = await client.post("/.well-known/est/broken", data=b"x")
                text = await resp.text()
                assert resp.status == 500 and text.startswith("internal_error: "), text
                resp = await client.get("/api/v1/unrendered")
                assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
                assert (await client.get("/nowhere")).status == 404  # aiohttp's own answers pass through
        finally:
            await rt.close()

    asyncio.run(body())
    faults = ca.audit("daemon.fault")
    assert [(f[0], f[3], f[4]) for f in faults] == [
        ("ckms", "/api/v1/broken", "error"),
        ("ckms", "/.well-known/est/broken", "error"),
    ]
    assert json.loads(faults[0][5])["error"] == "RuntimeError"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not alerts.exists() or alerts.read_text().count("daemon.fault") < 2
    ):
        time.sleep(0.1)
    assert alerts.read_text().count('"action": "daemon.fault"') == 2, alerts.read_text()
