"""The report as one HTML page a reviewer reads in a browser (no network, no external files).

Order: the run's provenance, the summary, what needs attention (failing items first, then partial,
not written, not executed and configuration-only passes), then every item by chapter. Each item row
opens to what implements it (links into the repository), its checks per host with their evidence,
verification level and limitations, attestations of procedural items, the coverage gaps and the
supporting suite tests. Buttons filter by status, a list by host, a box by text; the filters are a few
lines of inline script, and the page reads fine without it. Printed from a browser, the controls are
hidden and every evidence section is expanded (the form to file is hardening.report_form).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hardening import levels
from hardening.coverage import implemented_checks, load_implementations, reference_paths
from hardening.report import ATTENTION, provenance_rows, status_label

if TYPE_CHECKING:
    from hardening.report import Extras, ItemResult

#: the order of the summary cards
CARD_ORDER = (
    "fail",
    "partial",
    "not-written",
    "not-executed",
    "pass-configuration",
    "pass",
    "procedural",
    "not-applicable",
)
_PREFIX = "../../"  # the page is written to build/<report dir>/: links are relative to the repository

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:110em}
h1{margin-bottom:.2em}.sub{color:#555;margin-top:0}
.cards{display:flex;gap:.6em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .9em;min-width:7em;cursor:pointer;background:#fff}
.card b{display:block;font-size:1.6em}.card.off{opacity:.35}
.card.pass{border-color:#34a853}.card.fail{border-color:#d93025;background:#fce8e6}
.card.partial{border-color:#f9ab00}.card.not-written,.card.not-executed{border-color:#9aa0a6}
.card.procedural{border-color:#4285f4}.card.pass-configuration{border-color:#a142f4;background:#f3e8fd}
.bar{display:flex;gap:1em;align-items:center;margin:.5em 0 1em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4}tr.fail td:nth-child(3){background:#fce8e6;font-weight:bold}
tr.pass td:nth-child(3){background:#e6f4ea}tr.partial td:nth-child(3){background:#fff4e5}
tr.not-written td:nth-child(3),tr.not-executed td:nth-child(3){background:#f1f3f4}
tr.procedural td:nth-child(3){background:#e8f0fe}tr.pass-configuration td:nth-child(3){background:#f3e8fd}
tr.not-applicable{color:#777}
details pre{white-space:pre-wrap;font-size:.85em;background:#fafafa;padding:.5em;max-height:24em;overflow:auto}
.limit{margin:.2em 0;padding:.2em .4em;border-left:4px solid #f9ab00;background:#fef7e0;font-size:.9em}
.gap{margin:.2em 0;padding:.2em .4em;border-left:4px solid #d93025;background:#fce8e6;font-size:.9em}
.ok{color:#188038}.bad{color:#d93025;font-weight:bold}.skip{color:#777}
ul.refs{margin:.2em 0;padding-left:1.2em}code{font-size:.9em}
.level{margin:.2em 0;padding:.2em .4em;border-left:4px solid #a142f4;background:#f3e8fd;font-size:.9em}
.attest{margin:.2em 0;padding:.2em .4em;border-left:4px solid #4285f4;background:#e8f0fe;font-size:.9em}
table.prov td:first-child{white-space:nowrap;width:14em;color:#555}
@media print{
 body{margin:0;max-width:none;font-size:9pt}.bar,.card{cursor:auto}.bar,script{display:none}
 details::details-content{content-visibility:visible;display:block}
 details pre{max-height:none;overflow:visible}tr{break-inside:avoid-page}h2{break-after:avoid-page}
 a{color:inherit;text-decoration:none}
}
"""

_SCRIPT = """
const rows=[...document.querySelectorAll('tr.item')];const off=new Set();
function apply(){const h=document.getElementById('host').value;const q=document.getElementById('q').value.toLowerCase();
for(const r of rows){const hosts=r.dataset.hosts.split(' ');
r.style.display=(!off.has(r.dataset.status)&&(!h||hosts.includes(h))&&(!q||r.textContent.toLowerCase().includes(q)))?'':'none';}}
for(const c of document.querySelectorAll('.card[data-status]')){c.addEventListener('click',()=>{
const s=c.dataset.status;off.has(s)?off.delete(s):off.add(s);c.classList.toggle('off');apply();});}
document.getElementById('host').addEventListener('change',apply);document.getElementById('q').addEventListener('input',apply);
const want=new URLSearchParams(location.hash.slice(1));
if(want.get('host')){document.getElementById('host').value=want.get('host');}
if(want.get('status')){const keep=want.get('status').split(',');for(const c of document.querySelectorAll('.card[data-status]')){
if(!keep.includes(c.dataset.status)){off.add(c.dataset.status);c.classList.add('off');}}}
if(want.get('q')){document.getElementById('q').value=want.get('q');}
apply();
window.addEventListener('beforeprint',()=>{for(const d of document.querySelectorAll('details')){d.open=true;}
for(const r of rows){r.style.display='';}});
"""


def _link(path: str) -> str:
    e = html.escape
    return f'<a href="{e(_PREFIX + path)}"><code>{e(path)}</code></a>'


def _link_local(path: str) -> str:
    """A file written beside the report (build/<report dir>/...)."""
    e = html.escape
    return f'<a href="{e(path)}"><code>{e(path)}</code></a>'


def _outcome(outcome: str) -> str:
    return {"passed": "ok", "failed": "bad"}.get(outcome, "skip")


def _item_row(
    i: ItemResult,
    t: Mapping[str, str],
    lang: str,
    implementations: Mapping[str, list[str]],
    check_files: Mapping[str, str],
) -> str:
    e = html.escape
    c = i.control
    title = c.title_ja if lang == "ja" else c.title_en
    hosts = sorted({r["host"] for r in i.results})
    parts: list[str] = []
    if c.applicability == "not-applicable":
        parts.append(f"<p>{e(c.reason or '')}</p>")
    else:
        refs = []
        for ref in c.all_implemented_by():
            paths = reference_paths(ref, implementations)
            refs.append(f"<li><code>{e(ref)}</code> {' '.join(_link(p) for p in paths)}</li>")
        if c.procedure:
            refs.append(f"<li>{e(t['procedure'])}: {_link(c.procedure)}</li>")
        if refs:
            parts.append(f"<ul class='refs'>{''.join(refs)}</ul>")
    for g in i.gaps:
        parts.append(f"<p class='gap'>{e(t['gap'])}: {e(g.kind)}: {e(g.detail)}</p>")
    for r in i.configuration_only:
        kind = f", {t['host_kind']} {r['host_kind']}" if r.get("host_kind") else ""
        parts.append(
            f"<p class='level'>{e(t['level'])}: {e(t['configuration'])} ({e(r['check'])} @ {e(r['host'])}"
            f"{e(kind)}): {e(levels.level_reason(r))}</p>"
        )
    for r in i.other_limitations:
        parts.append(
            f"<p class='limit'>{e(t['limit'])} ({e(r['check'])} @ {e(r['host'])}): {e(r['limitation'])}</p>"
        )
    if i.attestation:
        parts.append(attestation_html(i, t))
    checks = []
    for cid in c.all_checks():
        where = check_files.get(cid)
        src = f" {_link(where)}" if where else ""
        recs = [r for r in i.results if r["check"] == cid]
        if not recs:
            why = t["check_not_written"] if cid in i.not_written else t["check_not_executed"]
            checks.append(f"<div><code>{e(cid)}</code>{src}: <span class='skip'>{e(why)}</span></div>")
            continue
        for r in recs:
            ev = "\n".join(f"{x['label']}: {x['value']}" for x in r.get("evidence", []))
            msg = f"\n{r['message']}" if r.get("message") else ""
            level = r.get("level") or levels.RUNTIME
            kind = f", {r['host_kind']}" if r.get("host_kind") else ""
            checks.append(
                f"<details{' open' if r['outcome'] == 'failed' else ''}><summary><code>{e(cid)}</code> @ "
                f"{e(r['host'])}{e(kind)}: <span class='{_outcome(r['outcome'])}'>{e(r['outcome'])}</span>"
                f" <small>({e(t['level'])}: {e(t[level])})</small>{src}</summary>"
                f"<pre>{e(msg.strip() + chr(10) + ev if msg else ev)}</pre></details>"
            )
    if checks:
        parts.append(f"<div>{''.join(checks)}</div>")
    if c.all_tests():
        parts.append(
            f"<details><summary>{e(t['tests'])} ({len(c.all_tests())})</summary><ul class='refs'>"
            + "".join(
                f"<li>{_link(x.removeprefix('test:').partition('::')[0])} <code>{e(x)}</code></li>"
                for x in c.all_tests()
            )
            + "</ul></details>"
        )
    return (
        f"<tr class='item {e(i.status)}' id='{e(c.id)}' data-status='{e(i.status)}' data-hosts='{e(' '.join(hosts))}'>"
        f"<td><a href='#{e(c.id)}'>{e(c.id)}</a></td><td>{e(title)}<br><small>{e(c.applicability)}</small></td>"
        f"<td>{e(status_label(i, t))}</td><td>{''.join(parts)}</td></tr>"
    )


def attestation_html(i: ItemResult, t: Mapping[str, str]) -> str:
    """A procedural item's attestations (ckms attest), or that it has none."""
    e = html.escape
    if not i.attestations:
        return f"<p class='attest'>{e(t['attestation'])}: {e(t['not-attested'])}</p>"
    lines = "".join(
        f"<li>{e(str(a['person']))}, {e(str(a['at']))}: {e(str(a['evidence_name']))} "
        f"<code>sha256:{e(str(a['evidence_sha256']))}</code> ({e(t['audit_seq'])} {e(str(a['audit_seq']))})"
        f"{' — ' + e(str(a['note'])) if a.get('note') else ''}</li>"
        for a in i.attestations
    )
    return f"<div class='attest'>{e(t['attestation'])}: {e(t['attested'])}<ul>{lines}</ul></div>"


def provenance_html(extras: Extras, t: Mapping[str, str]) -> str:
    """The run's provenance as a two-column table (hardening.provenance)."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in provenance_rows(extras.provenance, t)
    )
    return f"<table class='prov'>{rows}</table>"


def other_runs_html(extras: Extras, t: Mapping[str, str]) -> str:
    e = html.escape
    if not extras.other_run:
        return ""
    rows = "".join(
        f"<tr><td><code>{e(str(r['check']))}</code></td><td>{e(str(r['host']))}</td><td>{e(str(r['outcome']))}</td>"
        f"<td>{e(str(r.get('run_id') or '-'))}</td><td>{e(str(r.get('at')))}</td><td>{e(str(r.get('source')))}</td></tr>"
        for r in extras.other_run
    )
    return f"<h2 id='other-runs'>{e(t['other_runs'])} ({len(extras.other_run)})</h2><table>{rows}</table>"


def _table(rows: list[str], t: Mapping[str, str]) -> str:
    e = html.escape
    head = f"<tr><th>{e(t['item'])}</th><th></th><th>{e(t['status'])}</th><th>{e(t['how'])}</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def _policy_section(section: Mapping[str, Any], lang: str) -> str:
    """The security policy document (A.01): is it current, does each CA host's configuration match it."""
    e = html.escape
    ja = lang == "ja"
    doc = section["document_ja"] if ja else section["document"]
    state = (
        ("生成結果と一致" if ja else "current")
        if section["current"]
        else ("古い: " if ja else "stale: ") + "; ".join(section["stale"])
    )
    hosts = (
        "".join(
            f"<li>{e(str(h['host']))}: <span class='{_outcome(str(h['outcome']))}'>{e(str(h['outcome']))}</span> "
            f"{e('; '.join(h['drift']) or ('差異なし' if ja else 'no drift'))}</li>"
            for h in section["hosts"]
        )
        or f"<li>{e('配備との比較結果なし' if ja else 'no result of ' + section['check'])}</li>"
    )
    values = "".join(
        f"<tr><td><code>{e(k)}</code></td><td>{e(str(v))}</td></tr>" for k, v in _flatten(section["values"])
    )
    title = "セキュリティポリシー（A.01）" if ja else "Security policy (A.01)"
    return (
        f"<h2 id='security-policy'>{e(title)}</h2><p>{_link(doc)}: {e(state)}</p><ul>{hosts}</ul>"
        f"<details><summary>{e('記載している値' if ja else 'values the document states')}</summary>"
        f"<table>{values}</table></details>"
    )


def render(
    items: list[ItemResult],
    lang: str,
    generated: str,
    extras: Extras,
    t: Mapping[str, str],
    inventory_rows: list[tuple[str, str]],
) -> str:
    e = html.escape
    implementations = load_implementations()
    check_files = implemented_checks()
    counts = Counter(i.status for i in items)
    cards = "".join(
        f"<div class='card {s}' data-status='{s}'><b>{counts.get(s, 0)}</b>{e(t[s])}</div>"
        for s in CARD_ORDER
    )
    automated = [i for i in items if i.control.applicability == "automated"]
    passed = sum(1 for i in automated if i.status == "pass")
    hosts = sorted({r["host"] for i in items for r in i.results})
    host_options = "".join(f"<option>{e(h)}</option>" for h in hosts)
    attention = [i for s in ATTENTION for i in items if i.status == s]
    sections = []
    if attention:
        sections.append(f"<h2>{e(t['attention'])} ({len(attention)})</h2>")
        sections.append(_table([_item_row(i, t, lang, implementations, check_files) for i in attention], t))
    for chapter in "AEF":
        rows = [
            _item_row(i, t, lang, implementations, check_files)
            for i in items
            if i.control.chapter == chapter and i.status not in ATTENTION
        ]
        if rows:
            sections.append(f"<h2>{e(t['chapter'])} {chapter}</h2>")
            sections.append(_table(rows, t))
    gaps = ""
    if extras.gaps:
        gaps = (
            f"<h2>{e(t['gaps'])} ({len(extras.gaps)})</h2><table>"
            + "".join(
                f"<tr class='fail'><td><a href='#{e(g.item[:4])}'>{e(g.item)}</a></td><td>{e(g.kind)}</td>"
                f"<td>{e(g.detail)}</td></tr>"
                for g in extras.gaps
            )
            + "</table>"
        )
    policy = _policy_section(extras.security_policy, lang) if extras.security_policy else ""
    openscap = ""
    if extras.openscap:
        openscap = (
            f"<h2 id='openscap'>{e(t['openscap'])}</h2><table>"
            + "".join(
                f"<tr><td>{e(str(o['host']))}</td><td><code>{e(str(o['profile']))}</code><br>{e(str(o['content']))}, "
                f"{e(str(o['evaluated_at']))}</td><td>{e(', '.join(f'{k} {v}' for k, v in sorted(o['counts'].items())))}"
                f"</td><td>{_link_local(o['html']) if o['html'] else ''}<details><summary>{e(t['openscap_excluded'])} "
                f"({len(o['excluded'])})</summary><pre>{e(chr(10).join(o['excluded']))}</pre></details>"
                f"<details open><summary>{e(t['openscap_open'])} ({len(o['open'])})</summary>"
                f"<pre>{e(chr(10).join(o['open']))}</pre></details></td></tr>"
                for o in extras.openscap
            )
            + "</table>"
        )
    inventory = ""
    if extras.inventory:
        inv = extras.inventory
        changes = inv.get("changes") or []
        inventory = (
            f"<h2>{e(t['inventory'])}</h2><p>{e(t['collected'])}: {e(str(inv.get('collected_at')))}</p><table>"
            + "".join(f"<tr><td>{e(n)}</td><td>{e(d)}</td></tr>" for n, d in inventory_rows)
            + f"</table><h3>{e(t['changes'])} ({e(str(inv.get('previous_at') or t['no_previous']))})</h3><ul>"
            + ("".join(f"<li>{e(c)}</li>" for c in changes[:200]) or f"<li>{e(t['none'])}</li>")
            + "</ul>"
        )
    config_only = sum(1 for i in automated if i.status == "pass-configuration")
    data = json.dumps(
        {
            "automated": len(automated),
            "automated_pass": passed,
            "automated_pass_configuration": config_only,
            "gaps": len(extras.gaps),
        }
    )
    return (
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'><title>{e(t['title'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>{e(t['title'])}</h1>"
        f"<p class='sub'>{e(t['generated'])}: {e(generated)} · {e(t['automated_items'])}: {passed}/{len(automated)}"
        f" (+{config_only} {e(t['pass-configuration'])})"
        f" · {e(t['gaps'])}: {len(extras.gaps)}</p>"
        f"<details id='provenance'><summary>{e(t['provenance'])}: {e(str((extras.provenance or {}).get('run_id') or t['no_run']))}"
        f"</summary>{provenance_html(extras, t)}</details>"
        f"<section id='summary'><h2>{e(t['summary'])}</h2><div class='cards'>{cards}</div>"
        f"<div class='bar'><label>{e(t['host'])} <select id='host'><option value=''>—</option>{host_options}</select></label>"
        f"<label><input id='q' type='search' placeholder='{e(t['search'])}'></label></div></section>"
        + "".join(sections)
        + other_runs_html(extras, t)
        + gaps
        + policy
        + openscap
        + inventory
        + f"<script type='application/json' id='summary-data'>{data}</script><script>{_SCRIPT}</script>"
        + "</body></html>\n"
    )
