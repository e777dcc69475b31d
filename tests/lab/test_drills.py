"""Drills as tests (tests/lab/drills/*.py) and the rule-set comparison they rely on.

* The comparison of a router rule set with the flow model (hardening/checks/test_router.py) is tested
  offline: the rendered rule set passes, and widening any accept rule (source, destination, port, a
  rule without a port) makes it fail with a message that names F.18 a.
* The drills themselves run in test_make_lab_drills.py, against the session lab converged by ``make lab``
  (or the inventory named by ``CKMS_DRILL_INVENTORY``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ckms_lab.model import build_environment  # noqa: E402

# The rule-set comparison lives with the router checks, whose tests carry the `check` marker that the
# hardening plugin (hardening/checks/conftest.py) registers; register it here too before importing.
_config = getattr(pytest.mark, "_config", None)
if _config is not None and not any(str(m).startswith("check(") for m in _config.getini("markers")):
    _config.addinivalue_line("markers", "check(check_id): the catalog check this test implements")
from hardening.checks.test_router import forward_violations, input_violations  # noqa: E402

DRILLS = REPO / "tests" / "lab" / "drills"
NET = "10.238.0.0/16"


def _flows() -> list[dict]:
    return [dict(f) for f in build_environment("t", "lab", network=NET).to_dict()["flows"]]


def _rule(chain: str, *exprs: dict, comment: str | None = None) -> dict:
    r = {"rule": {"family": "inet", "table": "ckms_router", "chain": chain, "expr": list(exprs)}}
    if comment:
        r["rule"]["comment"] = comment
    return r


def _addr(field: str, values: list[str]) -> dict:
    right = (
        values[0]
        if len(values) == 1
        else {
            "set": [
                {"prefix": {"addr": v.split("/")[0], "len": int(v.split("/")[1])}} if "/" in v else v
                for v in values
            ]
        }
    )
    if len(values) == 1 and "/" in values[0] and not values[0].endswith("/32"):
        right = {"prefix": {"addr": values[0].split("/")[0], "len": int(values[0].split("/")[1])}}
    elif len(values) == 1:
        right = values[0].split("/")[0]
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": right}}


def _port(proto: str, port: int) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": port}}


ACCEPT = {"accept": None}
ESTABLISHED = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}


def rendered(flows: list[dict]) -> list[dict]:
    """The nft -j shape of the role's forward and input chains for these flows (router at .10.1)."""
    own = {"10.238.10.1/32", "10.238.20.1/32", "10.238.30.1/32"}
    rs: list[dict] = [
        {
            "chain": {
                "family": "inet",
                "table": "ckms_router",
                "name": "forward",
                "hook": "forward",
                "policy": "drop",
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "ckms_router",
                "name": "input",
                "hook": "input",
                "policy": "drop",
            }
        },
        {
            "set": {
                "family": "inet",
                "table": "ckms_router",
                "name": "admin_sources",
                "elem": ["10.238.0.1", "10.238.20.20", {"prefix": {"addr": "10.238.30.0", "len": 24}}],
            }
        },
        _rule("forward", ESTABLISHED, ACCEPT),
        _rule("input", ESTABLISHED, ACCEPT),
        _rule(
            "input",
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": "@admin_sources",
                }
            },
            _port("tcp", 22),
            ACCEPT,
            comment="router-admin",
        ),
        _rule("input", _port("udp", 51820), ACCEPT, comment="vpn-endpoint"),
    ]
    for f in flows:
        to_router = set(f["dst_cidrs"]) & own
        if to_router:
            rs.append(
                _rule(
                    "input",
                    _addr("saddr", f["src_cidrs"]),
                    _addr("daddr", sorted(to_router)),
                    _port(f["proto"], f["port"]),
                    ACCEPT,
                    comment=f["name"],
                )
            )
        else:
            rs.append(
                _rule(
                    "forward",
                    _addr("saddr", f["src_cidrs"]),
                    _addr("daddr", f["dst_cidrs"]),
                    _port(f["proto"], f["port"]),
                    ACCEPT,
                    comment=f["name"],
                )
            )
    return rs


def _problems(rs: list[dict], flows: list[dict]) -> list[str]:
    own = ["10.238.10.1/32", "10.238.20.1/32", "10.238.30.1/32"]
    admins = ["10.238.0.1/32"] + [c for f in flows if f["name"] == "admin-ssh" for c in f["src_cidrs"]]
    return forward_violations(rs, flows, own) + input_violations(rs, flows, admins, own, 51820)


def test_rendered_rule_set_matches_flow_model() -> None:
    flows = _flows()
    assert _problems(rendered(flows), flows) == []


@pytest.mark.parametrize(
    "widen", ["source", "destination", "port", "any", "no_port", "missing_flow", "policy", "router_input"]
)
def test_widened_rule_fails_and_names_the_item(widen: str) -> None:
    flows = _flows()
    rs = rendered(flows)
    est = next(i for i, x in enumerate(rs) if "rule" in x and x["rule"].get("comment") == "est")
    rule = copy.deepcopy(rs[est])
    exprs = rule["rule"]["expr"]
    if widen == "source":
        exprs[0] = _addr("saddr", ["10.238.20.0/24"])
    elif widen == "destination":
        exprs[1] = _addr("daddr", ["10.238.10.0/24"])
    elif widen == "port":
        exprs[2] = _port("tcp", 8444)
    elif widen == "any":
        del exprs[0]
    elif widen == "no_port":
        del exprs[2]
    elif widen == "missing_flow":
        rule = None
    elif widen == "policy":
        rs[0]["chain"]["policy"] = "accept"
    elif widen == "router_input":
        rs.append(_rule("input", _port("tcp", 8080), ACCEPT, comment="opened"))
    if widen not in ("policy", "router_input"):
        rs[est] = (
            rule
            if rule is not None
            else {"rule": {"family": "inet", "table": "ckms_router", "chain": "forward", "expr": []}}
        )
    problems = _problems(rs, flows)
    assert problems, f"widening ({widen}) was not detected"
    item = "A.66" if widen == "router_input" else "F.18 a"
    assert all(p.startswith(("F.18 a:", "A.66:")) for p in problems)
    assert any(p.startswith(item) for p in problems), problems
