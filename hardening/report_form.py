"""The report as a form to file: an A4 print layout a reviewer reads on paper (or as PDF) and signs.

Why a second page beside report.html: the interactive page hides evidence behind disclosure widgets and
filters, which do not print. The form is a document: a cover (scope, environment, date, run), the
summary with the run's provenance, then what needs attention (failing, partial, not written, not
executed, configuration-only and limited items) before every other item, each item with all its
evidence written out, an anchor per item (``form.html#A.05``; named destinations in the PDF), and a
signature block. Its layout is the same on screen and on paper (fixed A4 width, the cover one page
high), so a screenshot of the page shows what the PDF prints. hardening.report_pdf prints it.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hardening import levels
from hardening.catalog import CHAPTERS
from hardening.report import ATTENTION, provenance_rows, status_label
from hardening.report_html import CARD_ORDER, attestation_html

if TYPE_CHECKING:
    from hardening.report import Extras, ItemResult

#: background of each status (the summary, the index and each item's badge)
COLOURS = {
    "fail": "#fce8e6",
    "partial": "#fff4e5",
    "not-written": "#e8eaed",
    "not-executed": "#f1f3f4",
    "pass-configuration": "#f3e8fd",
    "pass": "#e6f4ea",
    "procedural": "#e8f0fe",
    "not-applicable": "#ffffff",
}
COVER_BAND = "#1a3d6e"

_CSS = """
@page{size:A4;margin:14mm 12mm 16mm}
@page :first{margin:0}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact;box-sizing:border-box}
html{background:#fff}
body{font-family:"Noto Sans CJK JP","IPAexGothic","IPAPGothic","IPAGothic",system-ui,sans-serif;font-size:9pt;color:#222;
 margin:0 auto;width:210mm;line-height:1.35}
.cover{height:297mm;width:210mm;break-after:page;position:relative;overflow:hidden}
.band{background:%(band)s;color:#fff;height:62mm;padding:16mm 14mm 0}
.band .sys{font-size:11pt;letter-spacing:.2em;opacity:.85}
.band h1{font-size:21pt;margin:4mm 0 0;font-weight:600}
.cover .body{padding:10mm 14mm}
.cover table.facts td{padding:2.2mm 3mm;border:none;border-bottom:1px solid #ddd;font-size:10pt}
.cover table.facts td:first-child{width:38mm;color:#555}
.cover nav{margin-top:10mm;font-size:10pt}.cover nav a{display:block;margin:1.5mm 0;color:#1a3d6e}
@media screen{.main{padding:0 12mm}}
section.part{break-before:page}
h2{font-size:13pt;border-bottom:2px solid %(band)s;padding-bottom:1mm;margin:0 0 3mm;break-after:avoid-page}
h3{font-size:10.5pt;margin:0 0 1mm}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:1mm 1.5mm;vertical-align:top;text-align:left}
th{background:#f4f4f4}
table.counts td{text-align:center;font-size:10pt}table.counts td b{display:block;font-size:15pt}
.index{display:flex;flex-wrap:wrap;gap:1mm;margin:3mm 0}
.index a{display:block;width:13.6mm;text-align:center;font-size:7.5pt;padding:.6mm 0;border:1px solid #bbb;
 color:#222;text-decoration:none}
article.item{border:1px solid #bbb;border-left-width:3mm;margin:0 0 3mm;padding:2mm 3mm;break-inside:avoid-page}
article.item.long{break-inside:auto}
.badge{float:right;padding:.5mm 2mm;border:1px solid #999;font-weight:600}
.meta{color:#555;margin:.5mm 0}
.check{margin:1.5mm 0 0;border-top:1px dotted #bbb;padding-top:1mm}
.check pre{white-space:pre-wrap;word-break:break-word;font-size:7.5pt;margin:.5mm 0 0;background:#fafafa;padding:1mm}
.ok{color:#188038}.bad{color:#d93025;font-weight:bold}.skip{color:#777}
.limit{border-left:3px solid #f9ab00;background:#fef7e0;padding:.5mm 1.5mm;margin:1mm 0}
.level{border-left:3px solid #a142f4;background:#f3e8fd;padding:.5mm 1.5mm;margin:1mm 0}
.gap{border-left:3px solid #d93025;background:#fce8e6;padding:.5mm 1.5mm;margin:1mm 0}
.attest{border-left:3px solid #4285f4;background:#e8f0fe;padding:.5mm 1.5mm;margin:1mm 0}
table.prov td{font-size:8pt;word-break:break-all}table.prov td:first-child{width:40mm;word-break:normal;color:#555}
.sign td{height:14mm}.sign td:first-child{width:45mm;color:#555}
a{color:inherit}
""".replace("%(band)s", COVER_BAND)


def _item_block(i: ItemResult, t: Mapping[str, str], lang: str) -> str:
    """One item with every piece of its evidence written out (nothing folded away)."""
    e = html.escape
    c = i.control
    title = c.title_ja if lang == "ja" else c.title_en
    parts = [
        f"<h3><span class='badge' style='background:{COLOURS[i.status]}'>{e(status_label(i, t))}</span>"
        f"<a href='#{e(c.id)}'>{e(c.id)}</a> {e(title)}</h3>"
    ]
    meta = [c.applicability]
    if c.applicability == "not-applicable" and c.reason:
        meta.append(c.reason)
    if c.all_implemented_by():
        meta.append(", ".join(c.all_implemented_by()))
    if c.procedure:
        meta.append(f"{t['procedure']}: {c.procedure}")
    parts.append(f"<p class='meta'>{e(' · '.join(meta))}</p>")
    parts += [f"<p class='gap'>{e(t['gap'])}: {e(g.kind)}: {e(g.detail)}</p>" for g in i.gaps]
    for r in i.configuration_only:
        parts.append(
            f"<p class='level'>{e(t['level'])}: {e(t['configuration'])} ({e(r['check'])} @ {e(r['host'])}"
            f"{', ' + e(str(r['host_kind'])) if r.get('host_kind') else ''}): {e(levels.level_reason(r))}</p>"
        )
    parts += [
        f"<p class='limit'>{e(t['limit'])} ({e(r['check'])} @ {e(r['host'])}): {e(r['limitation'])}</p>"
        for r in i.other_limitations
    ]
    if i.attestation:
        parts.append(attestation_html(i, t))
    for cid in c.all_checks():
        recs = [r for r in i.results if r["check"] == cid]
        if not recs:
            why = t["check_not_written"] if cid in i.not_written else t["check_not_executed"]
            parts.append(
                f"<div class='check'><code>{e(cid)}</code>: <span class='skip'>{e(why)}</span></div>"
            )
        for r in recs:
            cls = {"passed": "ok", "failed": "bad"}.get(r["outcome"], "skip")
            lines = [r["message"]] if r.get("message") else []
            lines += [f"{x['label']}: {x['value']}" for x in r.get("evidence", [])]
            level = t[r.get("level") or levels.RUNTIME]
            parts.append(
                f"<div class='check'><code>{e(cid)}</code> @ {e(str(r['host']))}"
                f"{', ' + e(str(r['host_kind'])) if r.get('host_kind') else ''}: "
                f"<span class='{cls}'>{e(r['outcome'])}</span> ({e(t['level'])}: {e(level)}; {e(str(r.get('at') or ''))})"
                f"<pre>{e(chr(10).join(lines))}</pre></div>"
            )
    if c.all_tests():
        parts.append(f"<p class='meta'>{e(t['tests'])}: {e(', '.join(c.all_tests()))}</p>")
    size = sum(len(str(r.get("evidence", ""))) for r in i.results)
    long = " long" if size > 3000 or len(i.results) > 6 else ""
    return (
        f"<article class='item {e(i.status)}{long}' id='{e(c.id)}' style='border-left-color:"
        f"{COLOURS[i.status] if i.status != 'not-applicable' else '#ddd'}'>{''.join(parts)}</article>"
    )


def _environment(extras: Extras, inventory_rows: list[tuple[str, str]]) -> str:
    kinds = levels.host_kinds(extras.inventory)
    if not kinds:
        return "-"
    return ", ".join(f"{h} ({k})" for h, k in sorted(kinds.items())) or "-"


def _signature(t: Mapping[str, str]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{e(value)}</td></tr>"
        for label, value in (
            (t["name"], ""),
            (t["role"], ""),
            (t["decision"], t["decision_text"]),
            (t["conditions"], ""),
            (t["date"], ""),
            (t["signature_line"], ""),
        )
    )
    return (
        f"<section class='part' id='signature'><h2>{e(t['signature'])}</h2>"
        f"<h3>{e(t['reviewer'])}</h3><table class='sign'>{rows}</table></section>"
    )


def render_form(
    items: list[ItemResult],
    lang: str,
    generated: str,
    extras: Extras,
    t: Mapping[str, str],
    inventory_rows: list[tuple[str, str]],
) -> str:
    """The whole form as one self-contained HTML document (no network, no script)."""
    e = html.escape
    prov = extras.provenance or {}
    counts = Counter(i.status for i in items)
    attested = Counter(i.attestation for i in items if i.attestation)
    first = [i for s in ATTENTION for i in items if i.status == s]
    limited = [i for i in items if i.status == "pass" and i.other_limitations]
    first_ids = {i.control.id for i in first + limited}
    rest = [i for i in items if i.control.id not in first_ids]
    facts = [
        (t["scope"], t["scope_text"].format(n=len(items))),
        (t["environment"], _environment(extras, inventory_rows)),
        (t["date"], generated),
        (t["run_id"], str(prov.get("run_id") or t["no_run"])),
        (t["commit"], str(prov.get("commit") or "?") + (f" ({t['dirty']})" if prov.get("dirty") else "")),
        (t["operator"], str(prov.get("operator") or "?")),
    ]
    sections = [
        ("summary", t["summary"]),
        ("attention", t["attention"]),
        ("items", t["every_item"]),
        ("signature", t["signature"]),
    ]
    cover = (
        f"<section class='cover' id='cover'><div class='band'><div class='sys'>ckms · CRYPTREC</div>"
        f"<h1>{e(t['cover_title'])}</h1><div>{e(t['title'])}</div></div><div class='body'>"
        f"<table class='facts'>{''.join(f'<tr><td>{e(k)}</td><td>{e(v)}</td></tr>' for k, v in facts)}</table>"
        f"<nav><b>{e(t['contents'])}</b>{''.join(f'<a href=#{a}>{e(n)}</a>' for a, n in sections)}</nav>"
        f"</div></section>"
    )
    count_cells = "".join(
        f"<td style='background:{COLOURS[s]}'><b>{counts.get(s, 0)}</b>{e(t[s])}</td>" for s in CARD_ORDER
    )
    index = "".join(
        f"<a href='#{e(i.control.id)}' style='background:{COLOURS[i.status]}' title='{e(t[i.status])}'>"
        f"{e(i.control.id)}</a>"
        for i in items
    )
    prov_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in provenance_rows(prov, t))
    summary = (
        f"<section class='part' id='summary'><h2>{e(t['summary'])}</h2>"
        f"<table class='counts'><tr>{count_cells}</tr></table>"
        f"<p>{e(t['procedural'])}: {e(t['attested'])} {attested['attested']}, {e(t['not-attested'])} "
        f"{attested['not-attested']} · {e(t['gaps'])}: {len(extras.gaps)}</p>"
        f"<div class='index'>{index}</div>"
        f"<h2 id='provenance'>{e(t['provenance'])}</h2><table class='prov'>{prov_rows}</table></section>"
    )
    attention = (
        f"<section class='part' id='attention'><h2>{e(t['attention'])} ({len(first)}), "
        f"{e(t['limited'])} ({len(limited)})</h2>"
        + ("".join(_item_block(i, t, lang) for i in first + limited) or f"<p>{e(t['none'])}</p>")
        + "</section>"
    )
    chapters = []
    for ch in CHAPTERS:
        blocks = [_item_block(i, t, lang) for i in rest if i.control.chapter == ch]
        if blocks:
            chapters.append(f"<h2>{e(t['chapter'])} {ch}</h2>" + "".join(blocks))
    gaps = ""
    if extras.gaps:
        gaps = (
            f"<h2>{e(t['gaps'])} ({len(extras.gaps)})</h2><table>"
            + "".join(
                f"<tr><td><a href='#{e(g.item[:4])}'>{e(g.item)}</a></td><td>{e(g.kind)}</td><td>{e(g.detail)}</td></tr>"
                for g in extras.gaps
            )
            + "</table>"
        )
    other = ""
    if extras.other_run:
        other = (
            f"<h2>{e(t['other_runs'])} ({len(extras.other_run)})</h2><table>"
            + "".join(
                f"<tr><td><code>{e(str(r['check']))}</code></td><td>{e(str(r['host']))}</td>"
                f"<td>{e(str(r.get('run_id') or '-'))}</td><td>{e(str(r.get('at')))}</td></tr>"
                for r in extras.other_run
            )
            + "</table>"
        )
    inventory = ""
    if inventory_rows:
        inventory = (
            f"<h2>{e(t['inventory'])}</h2><table>"
            + "".join(f"<tr><td>{e(n)}</td><td>{e(d)}</td></tr>" for n, d in inventory_rows)
            + "</table>"
        )
    title = f"{t['title']} — {prov.get('run_id') or generated}"
    return (
        f"<!doctype html><html lang='{e(lang)}'><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{cover}<div class='main'>{summary}{attention}"
        f"<section class='part' id='items'><h2>{e(t['every_item'])}</h2>{''.join(chapters)}</section>"
        f"{gaps}{other}{inventory}{_signature(t)}</div></body></html>\n"
    )
