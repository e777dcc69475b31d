#!/usr/bin/env python3
"""Summarise an OpenSCAP ARF result file as JSON: one row per rule (id, result, severity, title).

Usage: openscap-summary.py ARF.xml OUT.json [--profile ID] [--target NAME]
Only the standard library, so it runs with any python3 on the controller.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

NS = {
    "x": "http://checklists.nist.gov/xccdf/1.2",
    "arf": "http://scap.nist.gov/schema/asset-reporting-format/1.1",
}
X = "{http://checklists.nist.gov/xccdf/1.2}"
PREFIX = "xccdf_org.ssgproject.content_rule_"


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def summarise(arf: Path) -> dict:
    root = ET.parse(arf).getroot()
    rules: dict[str, dict] = {}
    for rule in root.iter(f"{X}Rule"):
        rules[rule.get("id", "")] = {
            "title": _text(rule.find(f"{X}title")),
            "platforms": [p.get("idref", "") for p in rule.findall(f"{X}platform")],
        }
    results = list(root.iter(f"{X}TestResult"))
    if not results:
        raise SystemExit(f"{arf}: no XCCDF TestResult")
    tr = results[-1]
    profile = tr.find(f"{X}profile")
    rows = []
    for rr in tr.findall(f"{X}rule-result"):
        rid = rr.get("idref", "")
        info = rules.get(rid, {})
        rows.append(
            {
                "id": rid.removeprefix(PREFIX),
                "result": _text(rr.find(f"{X}result")),
                "severity": rr.get("severity", "unknown"),
                "title": info.get("title", ""),
                "platforms": info.get("platforms", []),
            }
        )
    # rules not selected by the profile are listed by oscap as notselected: leave them out
    rows = [r for r in rows if r["result"] != "notselected"]
    score = tr.find(f"{X}score")
    return {
        "profile": profile.get("idref") if profile is not None else None,
        "benchmark": tr.find(f"{X}benchmark").get("id") if tr.find(f"{X}benchmark") is not None else None,
        "start_time": tr.get("start-time"),
        "end_time": tr.get("end-time"),
        "target": _text(tr.find(f"{X}target")),
        "score": float(score.text) if score is not None and score.text else None,
        "counts": dict(collections.Counter(r["result"] for r in rows)),
        "rules": sorted(rows, key=lambda r: (r["result"], r["id"])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arf", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help="added to the summary")
    args = ap.parse_args(argv)
    doc = summarise(args.arf)
    for kv in args.extra:
        k, _, v = kv.partition("=")
        doc[k] = v
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(" ".join(f"{k}={v}" for k, v in sorted(doc["counts"].items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
