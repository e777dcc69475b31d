"""The hub's device listener holds at most so many connections in all and per source address: a flood from
one address cannot take every thread from the other devices, a finished connection frees its slot, and the
refusals are logged at most once a second per source with how many were refused since."""

from __future__ import annotations

import json

from ckms_app.hub.gateway import ConnectionSlots


def _refusals(capsys) -> list[dict]:
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    return [x for x in lines if x["event"] == "device.refused"]


def test_per_source_and_total_caps(capsys):
    slots = ConnectionSlots(total=10, per_source=3)
    assert all(slots.take("10.0.0.1") for _ in range(3))
    assert not slots.take("10.0.0.1")  # the flooding source is capped
    assert all(slots.take(f"10.0.0.{i}") for i in range(2, 9))  # others still get in: 3 + 7 = 10
    assert not slots.take("10.0.0.99")  # the hub is full
    slots.give("10.0.0.1")
    assert slots.take("10.0.0.99")  # a finished connection frees its slot
    assert not slots.take("10.0.0.1")
    refused = _refusals(capsys)
    assert {r["source"] for r in refused} == {"10.0.0.1", "10.0.0.99"}
    assert all(r["reason"] == "too many connections" for r in refused)


def test_refusals_are_logged_once_a_second_per_source(capsys):
    slots = ConnectionSlots(total=100, per_source=1)
    assert slots.take("10.0.0.1")
    for _ in range(500):
        assert not slots.take("10.0.0.1")
    refused = _refusals(capsys)
    assert len(refused) == 1 and refused[0]["refused"] == 1
