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
import html
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from hardening.catalog import Control, load_catalog

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
    },
}


@dataclass
class ItemResult:
    control: Control
    status: str
    results: list[dict[str, Any]] = field(default_factory=list)
    missing_checks: list[str] = field(default_factory=list)

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


def evaluate(catalog: Mapping[str, Control], records: list[dict[str, Any]]) -> list[ItemResult]:
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


def to_json(items: list[ItemResult], lang: str, generated: str) -> dict[str, Any]:
    return {
        "generated_at": generated,
        "lang": lang,
        "summary": dict(Counter(i.status for i in items)),
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


def to_markdown(items: list[ItemResult], lang: str, generated: str) -> str:
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
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}th{background:#f4f4f4}
.pass{background:#e6f4ea}.fail{background:#fce8e6;font-weight:bold}.partial{background:#fff4e5}
.not-run{background:#f1f3f4}.procedural{background:#e8f0fe}.not-applicable{color:#777}
details pre{white-space:pre-wrap;font-size:.85em;background:#fafafa;padding:.5em}
.limit{margin:.2em 0;padding:.2em .4em;border-left:4px solid #f9ab00;background:#fef7e0;font-size:.9em}"""


def to_html(items: list[ItemResult], lang: str, generated: str) -> str:
    t = TEXT[lang]
    e = html.escape
    counts = Counter(i.status for i in items)
    rows = []
    for i in items:
        details = ""
        if i.results or i.missing_checks:
            parts = []
            for r in i.results:
                ev = "\n".join(f"{x['label']}: {x['value']}" for x in r.get("evidence", []))
                msg = f"\n{r['message']}" if r.get("message") else ""
                parts.append(
                    f"<b>{e(r['check'])}</b> @ {e(r['host'])}: {e(t.get(r['outcome'].replace('ed', ''), r['outcome']))}"
                    f"<pre>{e(ev + msg)}</pre>"
                )
            parts += [f"<b>{e(c)}</b>: {e(t['not-run'])}<br>" for c in i.missing_checks]
            details = (
                f"<details><summary>{e(t['evidence'])} ({len(i.results)})</summary>{''.join(parts)}</details>"
            )
        if i.limitations:
            details = (
                "".join(
                    f"<p class='limit'>{e(t['limit'])} ({e(r['check'])} @ {e(r['host'])}): "
                    f"{e(r['limitation'])}</p>"
                    for r in i.limitations
                )
                + details
            )
        if i.control.all_tests():
            details += (
                f"<details><summary>{e(t['tests'])} ({len(i.control.all_tests())})</summary><ul>"
                + "".join(f"<li><code>{e(x)}</code></li>" for x in i.control.all_tests())
                + "</ul></details>"
            )
        how = _how(i.control)
        if i.control.applicability == "procedural" and i.control.procedure:
            how = f'<a href="../../{e(i.control.procedure)}">{e(i.control.procedure)}</a>'
        else:
            how = e(how)
        rows.append(
            f'<tr class="{i.status}"><td>{e(i.control.id)}</td><td>{e(_title(i.control, lang))}</td>'
            f"<td>{e(t[i.status])}</td><td>{how}{details}</td></tr>"
        )
    summary = "".join(f"<td class='{s}'>{e(t[s])}: {counts.get(s, 0)}</td>" for s in STATUSES)
    return (
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'><title>{e(t['title'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>{e(t['title'])}</h1><p>{e(t['generated'])}: {e(generated)}</p>"
        f"<h2>{e(t['summary'])}</h2><table><tr>{summary}</tr></table><h2>{e(t['item'])}</h2>"
        f"<table><tr><th>{e(t['item'])}</th><th></th><th>{e(t['status'])}</th><th>{e(t['how'])}</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def write_report(out: Path, items: list[ItemResult], lang: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    files = {
        "json": out / "report.json",
        "html": out / "report.html",
        "junit": out / "junit.xml",
        "markdown": out / "summary.md",
    }
    files["json"].write_text(json.dumps(to_json(items, lang, generated), indent=1, ensure_ascii=False))
    files["html"].write_text(to_html(items, lang, generated))
    to_junit(items).write(files["junit"], encoding="utf-8", xml_declaration=True)
    files["markdown"].write_text(to_markdown(items, lang, generated))
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
        help="exit 1 unless every automated item of this chapter (A, E or F) passes",
    )
    args = parser.parse_args(argv)
    items = evaluate(load_catalog(), load_results(args.results))
    files = write_report(args.out, items, args.lang)
    counts = Counter(i.status for i in items)
    print(" ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES))
    for i in items:
        for r in i.limitations:
            print(f"{i.control.id}: pass, limited here ({r['check']} @ {r['host']}): {r['limitation']}")
    print(f"report: {files['html']}")
    bad = [
        i
        for i in items
        if i.control.chapter in args.require and i.control.applicability == "automated" and i.status != "pass"
    ]
    for i in bad:
        print(
            f"{i.control.id}: {i.status} ({', '.join(r['check'] for r in i.results if r['outcome'] == 'failed') or 'no results'})"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
