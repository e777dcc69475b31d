"""The per-item hardening report: catalog + check results → HTML, JSON, JUnit XML, Markdown.

A security reviewer reads it item by item: what the guidance asks (in our words), whether ckms meets
it automatically (and the checks that prove it, per host, with evidence), procedurally (with the
document section) or not at all in the toy model (with the reason).

An item's status comes from its ``checks`` only: a check counts as passed when a record of it passed
and none failed (a check that one source skips and another -- e.g. a drill -- runs and passes is
passed). Results that carry a ``limitation`` (what the platform did not let the check observe, e.g.
AppArmor enforcement in a lab container) are listed as such next to the item. The catalog's ``tests``
(suite tests) are listed as supporting evidence and never counted.

    python -m hardening.report --results build/report/results.json [--results drills.json] \
        --out build/report --lang ja|en [--require F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from hardening import security_policy
from hardening.catalog import Control, load_catalog
from hardening.coverage import Gap, coverage_gaps

STATUSES = ("pass", "fail", "partial", "not-run", "procedural", "not-applicable")
TEXT = {
    "en": {
        "title": "ckms hardening report",
        "item": "Item",
        "status": "Status",
        "how": "How it is met",
        "evidence": "Evidence",
        "host": "Host",
        "check": "Check",
        "generated": "Generated",
        "summary": "Summary",
        "reason": "Reason",
        "procedure": "Procedure",
        "failures": "Failing checks",
        "pass": "pass",
        "fail": "FAIL",
        "partial": "partial",
        "not-run": "not run",
        "procedural": "procedural",
        "not-applicable": "not applicable",
        "none": "none",
        "limited": "Verified with a limitation of this environment",
        "limit": "limitation",
        "tests": "Supporting suite tests (not counted)",
        "gaps": "Coverage gaps (evidence the catalog cites that does not exist)",
        "gap": "gap",
        "inventory": "System inventory",
        "changes": "Changes since the previous collection",
        "collected": "collected",
        "no_previous": "no previous collection",
        "attention": "Needs attention: failing, partial and not run",
        "chapter": "Chapter",
        "automated_items": "automated items passing",
        "search": "filter by text",
        "openscap": "Public baseline (OpenSCAP, supporting evidence)",
    },
    "ja": {
        "title": "ckms 堅牢化レポート",
        "item": "項目",
        "status": "状態",
        "how": "対応方法",
        "evidence": "証跡",
        "host": "ホスト",
        "check": "チェック",
        "generated": "生成日時",
        "summary": "集計",
        "reason": "理由",
        "procedure": "手順書",
        "failures": "不合格のチェック",
        "pass": "合格",
        "fail": "不合格",
        "partial": "一部",
        "not-run": "未実施",
        "procedural": "手続き",
        "not-applicable": "対象外",
        "none": "なし",
        "limited": "この環境の制約つきで検証した項目",
        "limit": "制約",
        "tests": "補足の自動テスト（集計対象外）",
        "gaps": "カバレッジの欠落（カタログが挙げるが存在しない証跡）",
        "gap": "欠落",
        "inventory": "システムインベントリ",
        "changes": "前回の収集からの変更",
        "collected": "収集日時",
        "no_previous": "前回の収集なし",
        "attention": "要対応：不合格・一部・未実施",
        "chapter": "章",
        "automated_items": "自動検証項目の合格数",
        "search": "文字列で絞り込み",
        "openscap": "公開ベースライン（OpenSCAP、補足の証跡）",
    },
}


@dataclass
class ItemResult:
    control: Control
    status: str
    results: list[dict[str, Any]] = field(default_factory=list)
    missing_checks: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def limitations(self) -> list[dict[str, Any]]:
        """Passed results that could verify only part of their control here (one per check and host)."""
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.results:
            if r.get("limitation") and r["outcome"] == "passed":
                seen.setdefault((r["check"], r["host"]), r)
        return list(seen.values())


def load_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of check records")
        records += data
    return records


def evaluate(
    catalog: Mapping[str, Control], records: list[dict[str, Any]], gaps: Iterable[Gap] = ()
) -> list[ItemResult]:
    """Each item's status from its checks' records; an item with a coverage gap is never "pass"."""
    items = _evaluate(catalog, records)
    for i in items:
        i.gaps = [g for g in gaps if g.item[:4] == i.control.id]
        if i.gaps and i.status == "pass":
            i.status = "partial"
    return items


@dataclass
class Extras:
    """What the report shows beside the items: coverage gaps and the system inventory."""

    gaps: list[Gap] = field(default_factory=list)
    inventory: dict[str, Any] | None = None
    security_policy: dict[str, Any] | None = None  # hardening.security_policy.report_section
    openscap: list[dict[str, Any]] = field(default_factory=list)  # scripts/openscap-eval.sh summaries


def _evaluate(catalog: Mapping[str, Control], records: list[dict[str, Any]]) -> list[ItemResult]:
    by_check: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_check.setdefault(rec["check"], []).append(rec)
    out = []
    for item_id in sorted(catalog, key=_order):
        control = catalog[item_id]
        if control.applicability == "not-applicable":
            out.append(ItemResult(control, "not-applicable"))
            continue
        checks = control.all_checks()
        results = [r for c in checks for r in by_check.get(c, [])]
        missing = [c for c in checks if c not in by_check]
        if control.applicability == "procedural" and not checks:
            out.append(ItemResult(control, "procedural"))
            continue
        per_check = {c: _check_outcome(by_check[c]) for c in checks if c in by_check}
        outcomes = set(per_check.values())
        if "failed" in outcomes:
            status = "fail"
        elif not results or outcomes == {"skipped"}:
            status = "procedural" if control.applicability == "procedural" else "not-run"
        elif missing or "skipped" in outcomes:
            status = "partial"
        else:
            status = "pass"
        out.append(ItemResult(control, status, results, missing))
    return out


def _check_outcome(records: list[dict[str, Any]]) -> str:
    """One check's outcome over all its records (hosts, runs, drills): failed > passed > skipped."""
    outcomes = {r["outcome"] for r in records}
    return "failed" if "failed" in outcomes else "passed" if "passed" in outcomes else "skipped"


def _order(item_id: str) -> tuple[int, int]:
    return ("AEF".index(item_id[0]), int(item_id[2:4]))


def _title(control: Control, lang: str) -> str:
    return control.title_ja if lang == "ja" else control.title_en


def _how(control: Control) -> str:
    if control.applicability == "not-applicable":
        return control.reason or ""
    if control.applicability == "procedural" and control.procedure:
        return control.procedure
    return ", ".join(control.all_implemented_by())


def to_json(
    items: list[ItemResult], lang: str, generated: str, extras: Extras | None = None
) -> dict[str, Any]:
    extras = extras or Extras()
    return {
        "generated_at": generated,
        "lang": lang,
        "summary": dict(Counter(i.status for i in items)),
        "coverage_gaps": [{"item": g.item, "kind": g.kind, "detail": g.detail} for g in extras.gaps],
        "inventory": extras.inventory,
        "security_policy": extras.security_policy,
        "openscap": [{k: v for k, v in o.items() if k != "rules_detail"} for o in extras.openscap],
        "items": [
            {
                "id": i.control.id,
                "title": _title(i.control, lang),
                "applicability": i.control.applicability,
                "status": i.status,
                "implemented_by": list(i.control.all_implemented_by()),
                "procedure": i.control.procedure,
                "reason": i.control.reason,
                "checks_without_results": i.missing_checks,
                "coverage_gaps": [str(g) for g in i.gaps],
                "limitations": [
                    {"check": r["check"], "host": r["host"], "limitation": r["limitation"]}
                    for r in i.limitations
                ],
                "supporting_tests": list(i.control.all_tests()),
                "results": i.results,
            }
            for i in items
        ],
    }


def to_junit(items: list[ItemResult]) -> ET.ElementTree:
    suites = ET.Element("testsuites", name="ckms-hardening")
    for chapter in "AEF":
        chapter_items = [
            i for i in items if i.control.chapter == chapter and i.control.applicability != "not-applicable"
        ]
        suite = ET.SubElement(suites, "testsuite", name=f"guidance-{chapter}")
        failures = skipped = tests = 0
        for i in chapter_items:
            for rec in i.results:
                tests += 1
                case = ET.SubElement(
                    suite,
                    "testcase",
                    classname=i.control.id,
                    name=f"{rec['check']} @ {rec['host']}",
                    time=str(rec.get("duration_s", 0)),
                )
                if rec["outcome"] == "failed":
                    failures += 1
                    ET.SubElement(case, "failure", message=rec.get("message") or "failed").text = json.dumps(
                        rec.get("evidence", []), ensure_ascii=False
                    )
                elif rec["outcome"] == "skipped":
                    skipped += 1
                    ET.SubElement(case, "skipped", message=rec.get("message") or "skipped")
            for check in i.missing_checks if i.control.applicability == "automated" else []:
                tests += 1
                skipped += 1
                case = ET.SubElement(suite, "testcase", classname=i.control.id, name=check)
                ET.SubElement(case, "skipped", message="no result for this check")
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("skipped", str(skipped))
    return ET.ElementTree(suites)


def to_markdown(items: list[ItemResult], lang: str, generated: str, extras: Extras | None = None) -> str:
    extras = extras or Extras()
    t = TEXT[lang]
    counts = Counter(i.status for i in items)
    lines = [
        f"# {t['title']}",
        "",
        f"{t['generated']}: {generated}",
        "",
        f"## {t['summary']}",
        "",
        "| " + " | ".join(t[s] for s in STATUSES) + " |",
        "|" + " --- |" * len(STATUSES),
        "| " + " | ".join(str(counts.get(s, 0)) for s in STATUSES) + " |",
        "",
    ]
    failing = [(i, r) for i in items for r in i.results if r["outcome"] == "failed"]
    lines += [f"## {t['failures']}", ""]
    if failing:
        lines += [f"| {t['item']} | {t['check']} | {t['host']} | message |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {i.control.id} | `{r['check']}` | {r['host']} | {_md(r.get('message') or '')} |"
            for i, r in failing
        ]
    else:
        lines.append(t["none"])
    if extras.gaps:
        lines += ["", f"## {t['gaps']}", "", f"| {t['item']} | {t['gap']} |", "| --- | --- |"]
        lines += [f"| {g.item} | {g.kind}: {_md(g.detail)} |" for g in extras.gaps]
    limited = [(i, r) for i in items for r in i.limitations]
    if limited:
        lines += [
            "",
            f"## {t['limited']}",
            "",
            f"| {t['item']} | {t['check']} | {t['host']} | {t['limit']} |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {i.control.id} | `{r['check']}` | {r['host']} | {_md(r['limitation'])} |" for i, r in limited
        ]
    lines += ["", f"| {t['item']} | {t['status']} | {t['how']} |", "| --- | --- | --- |"]
    lines += [
        f"| {i.control.id} {_md(_title(i.control, lang))} | {t[i.status]}{' *' if i.limitations else ''} "
        f"| {_md(_how(i.control))} |"
        for i in items
    ]
    if extras.security_policy:
        from hardening.security_policy import report_markdown

        lines += [""] + report_markdown(extras.security_policy, lang)
    lines += _openscap_markdown(extras.openscap, t)
    lines += _inventory_markdown(extras.inventory, t)
    return "\n".join(lines) + "\n"


def load_openscap(directory: Path | None) -> list[dict[str, Any]]:
    """The OpenSCAP summaries (``make baseline``) of ``directory``, each with its HTML report's name."""
    out = []
    for path in sorted(directory.glob("*.json")) if directory and directory.is_dir() else []:
        doc = json.loads(path.read_text())
        html_file = path.with_suffix(".html")
        counts = doc.get("counts", {})
        out.append(
            {
                "host": doc.get("host"),
                "profile": doc.get("profile"),
                "evaluated_at": doc.get("end_time"),
                "content": doc.get("content"),
                "counts": counts,
                "failing": [
                    r["id"] for r in doc.get("rules", []) if r.get("result") in ("fail", "error", "unknown")
                ],
                "html": f"{directory.name}/{html_file.name}" if html_file.exists() else None,
            }
        )
    return out


def _openscap_markdown(runs: list[dict[str, Any]], t: dict[str, str]) -> list[str]:
    if not runs:
        return []
    lines = [
        "",
        f"## {t['openscap']}",
        "",
        f"| {t['host']} | profile | pass | fail | {t['evidence']} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        c = r["counts"]
        lines.append(
            f"| {r['host']} | {r['profile']} | {c.get('pass', 0)} | {c.get('fail', 0)} | {r['html'] or ''} |"
        )
    return lines


def _inventory_rows(inventory: dict[str, Any]) -> list[tuple[str, str]]:
    """(host, one-line description) per host of an inventory collection (hardening.inventory)."""
    rows = []
    for name, h in sorted(inventory.get("hosts", {}).items()):
        if "error" in h:
            rows.append((name, f"unreachable: {h['error']}"))
            continue
        os_ = h.get("os", {})
        parts = [
            f"{os_.get('name')} (kernel {os_.get('kernel')}, {os_.get('arch')}, {h.get('virtualisation')})",
            f"{h.get('packages', {}).get('count')} packages",
            "boot: " + ", ".join(f"{k} {v}" for k, v in sorted(h.get("boot", {}).items())),
        ]
        ca = h.get("ca")
        if ca:
            tok = ca.get("token") or {}
            parts.append(
                f"HSM module {ca.get('module')}; token {tok.get('token label')} by {tok.get('token manufacturer')} "
                f"model {tok.get('token model')} fw {tok.get('firmware version')} hw {tok.get('hardware version')}; "
                f"{ca.get('daemon_version')} code {str(ca.get('daemon_code_digest'))[:19]}"
            )
        if h.get("firewall"):
            parts.append(f"nftables rule set {h['firewall']['ruleset_digest'][:19]}")
        if h.get("declared"):
            parts.append("declared: " + ", ".join(f"{k}={v}" for k, v in sorted(h["declared"].items())))
        rows.append((name, "; ".join(parts)))
    return rows


def _inventory_markdown(inventory: dict[str, Any] | None, t: dict[str, str]) -> list[str]:
    if not inventory:
        return []
    lines = ["", f"## {t['inventory']}", "", f"{t['collected']}: {inventory.get('collected_at')}", ""]
    lines += [f"| {t['host']} | |", "| --- | --- |"]
    lines += [f"| {n} | {_md(d)} |" for n, d in _inventory_rows(inventory)]
    changes = inventory.get("changes") or []
    lines += ["", f"### {t['changes']} ({inventory.get('previous_at') or t['no_previous']})", ""]
    lines += [f"- {_md(c)}" for c in changes[:200]] or [t["none"]]
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_html(items: list[ItemResult], lang: str, generated: str, extras: Extras | None = None) -> str:
    from hardening.report_html import render

    extras = extras or Extras()
    rows = _inventory_rows(extras.inventory) if extras.inventory else []
    return render(items, lang, generated, extras, TEXT[lang], rows)


def write_report(
    out: Path, items: list[ItemResult], lang: str, extras: Extras | None = None
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    files = {
        "json": out / "report.json",
        "html": out / "report.html",
        "junit": out / "junit.xml",
        "markdown": out / "summary.md",
    }
    files["json"].write_text(
        json.dumps(to_json(items, lang, generated, extras), indent=1, ensure_ascii=False)
    )
    files["html"].write_text(to_html(items, lang, generated, extras))
    to_junit(items).write(files["junit"], encoding="utf-8", xml_declaration=True)
    files["markdown"].write_text(to_markdown(items, lang, generated, extras))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardening.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--results", type=Path, action="append", default=[], help="check results JSON (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=Path("build/report"))
    parser.add_argument("--lang", choices=sorted(TEXT), default="en")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="CHAPTER",
        help="exit 1 unless every automated item of this chapter (A, E or F) passes, no item of it fails "
        "and it has no coverage gap (hardening.coverage)",
    )
    parser.add_argument(
        "--inventory", type=Path, help="system inventory (hardening.inventory's inventory.json)"
    )
    parser.add_argument("--catalog", type=Path, help="catalog directory (default hardening/catalog)")
    parser.add_argument("--openscap", type=Path, help="directory of OpenSCAP summaries (make baseline)")
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog)
    gaps = coverage_gaps(catalog)
    inventory = json.loads(args.inventory.read_text()) if args.inventory and args.inventory.exists() else None
    records = load_results(args.results)
    policy = security_policy.report_section(records)
    if policy["stale"]:  # the document no longer says what the roles deploy: regenerate it
        gaps.append(Gap("A.01", "stale-document", "; ".join(policy["stale"])))
    items = evaluate(catalog, records, gaps)
    files = write_report(
        args.out, items, args.lang, Extras(gaps, inventory, policy, load_openscap(args.openscap))
    )
    counts = Counter(i.status for i in items)
    print(" ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES))
    for i in items:
        for r in i.limitations:
            print(f"{i.control.id}: pass, limited here ({r['check']} @ {r['host']}): {r['limitation']}")
    print(f"report: {files['html']}")
    bad = [
        i
        for i in items
        if i.control.chapter in args.require
        and ((i.control.applicability == "automated" and i.status != "pass") or i.status == "fail")
    ]
    for i in bad:
        print(
            f"{i.control.id}: {i.status} ({', '.join(r['check'] for r in i.results if r['outcome'] == 'failed') or 'no results'})"
        )
    gaps_failing = [g for g in gaps if g.item[0] in args.require]
    for g in gaps_failing:
        print(f"coverage gap: {g}")
    return 1 if bad or gaps_failing else 0


if __name__ == "__main__":
    sys.exit(main())
