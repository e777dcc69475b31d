#!/usr/bin/env python3
"""Write the variables section of every role's README from its meta/argument_specs.yml.

Each README keeps its own prose; the table between the markers below is generated (one table per entry
point: main, and e.g. ckms_ca's terminal or backup's restore). Edit the spec, then run this script.
  scripts/role-docs.py            rewrite the sections (appended to a README that has none)
  scripts/role-docs.py --check    exit 1 naming each README whose section is missing or stale
  scripts/role-docs.py --production [--check]
                                  the same for the per-role variable tables of docs/production.md and of
                                  its Japanese version docs/production.ja.md (between PROD_BEGIN and
                                  PROD_END; required variables flagged; the Japanese section has Japanese
                                  headings and labels, the spec's descriptions stay in English)
tests/unit/test_role_docs.py runs --check and checks the READMEs against the specs;
tests/unit/test_production_doc.py runs --production --check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- variables: generated from meta/argument_specs.yml by scripts/role-docs.py; edit the spec, not this table -->"
END = "<!-- end of generated variables -->"
DEFAULT_WIDTH = 48
PRODUCTION_DOC = REPO / "docs" / "production.md"
# Each language's production quick start carries the same generated section, with its own labels.
PRODUCTION_DOCS = {"en": PRODUCTION_DOC, "ja": REPO / "docs" / "production.ja.md"}
LABELS = {
    "en": {
        "role": "### {role}",
        "entry": "Entry point `{entry}` (`tasks_from: {entry}`): {description}",
        "required": "Required: {names}",
        "none_required": "Required: none (each variable has a spec or role default).",
        "header": "| variable | type | default | description |",
        "flag": "**required**",
        "see_defaults": "see `defaults/main.yml`",
        "list_of": "list of {elements}",
        "choices": "{kind} ({choices})",
        "choice_sep": ", ",
        "required_type": "{kind}, required",
    },
    "ja": {
        "role": "### {role} ロール",
        "entry": "エントリポイント `{entry}`（`tasks_from: {entry}`）: {description}",
        "required": "必須の変数: {names}",
        "none_required": "必須の変数: なし（どの変数にも spec かロールの既定値があります）。",
        "header": "| 変数 | 型 | 既定値 | 説明 |",
        "flag": "**必須**",
        "see_defaults": "`defaults/main.yml` を参照",
        "list_of": "list（要素 {elements}）",
        "choices": "{kind}（{choices}）",
        "choice_sep": " / ",
        "required_type": "{kind}、必須",
    },
}
PROD_BEGIN = (
    "<!-- BEGIN GENERATED: role variables (scripts/role-docs.py --production, from each role's"
    " meta/argument_specs.yml; edit the spec, not this section) -->"
)
PROD_END = "<!-- END GENERATED: role variables -->"
# Roles in the order site.yml runs them; a role not listed here follows in alphabetical order.
CONVERGE_ORDER = [
    "os_hardening",
    "integrity",
    "antimalware",
    "audit",
    "router",
    "ntp",
    "ids",
    "ups",
    "hsm_client",
    "ckms_ca",
    "backup",
]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(opt: dict, lang: str = "en") -> str:
    if "default" not in opt:
        return "—"
    value = opt["default"]
    if isinstance(value, str):
        shown = value
    else:
        shown = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(shown) > DEFAULT_WIDTH:
        return LABELS[lang]["see_defaults"]
    return f"`{_cell(shown)}`" if shown else '`""`'


def _type(opt: dict, lang: str = "en") -> str:
    label = LABELS[lang]
    kind = opt.get("type", "str")
    if kind == "list" and "elements" in opt:
        kind = label["list_of"].format(elements=opt["elements"])
    if "choices" in opt:
        choices = label["choice_sep"].join(str(c) for c in opt["choices"])
        kind = label["choices"].format(kind=kind, choices=choices)
    if opt.get("required"):
        kind = label["required_type"].format(kind=kind)
    return kind


def section(role_dir: Path) -> str:
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    lines = [BEGIN]
    for entry, spec in specs.items():
        options = spec.get("options") or {}
        if len(specs) > 1:
            how = "the role" if entry == "main" else f"`tasks_from: {entry}`"
            lines += ["", f"Entry point `{entry}` ({how}): {_cell(spec.get('short_description', ''))}"]
        lines += ["", "| variable | type | default | description |", "| --- | --- | --- | --- |"]
        for name, opt in options.items():
            desc = opt.get("description", "")
            if isinstance(desc, list):
                desc = " ".join(desc)
            lines.append(f"| `{name}` | {_cell(_type(opt))} | {_default(opt)} | {_cell(desc)} |")
    lines.append(END)
    return "\n".join(lines)


def render(readme: str, role_dir: Path) -> str:
    new = section(role_dir)
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        return head + new + rest.split(END, 1)[1]
    return readme.rstrip("\n") + "\n\n## Variables\n\n" + new + "\n"


def _role_dirs() -> list[Path]:
    return sorted(p for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())


def required(opt: dict, role_defaults: dict, name: str) -> bool:
    """Required: the spec says so, or neither the spec nor defaults/main.yml gives a value."""
    return bool(opt.get("required")) or ("default" not in opt and name not in role_defaults)


def production_section(lang: str = "en") -> str:
    """Per-role variable tables for docs/production.md (lang "en") or docs/production.ja.md ("ja"),
    required variables flagged and listed first."""
    label = LABELS[lang]
    dirs = {p.name: p for p in _role_dirs()}
    order = [r for r in CONVERGE_ORDER if r in dirs] + sorted(set(dirs) - set(CONVERGE_ORDER))
    lines = [PROD_BEGIN]
    for role in order:
        role_dir = dirs[role]
        specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        defaults = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text()) or {}
        main_spec = specs.get("main", {})
        lines += [
            "",
            label["role"].format(role=role),
            "",
            f"{_cell(main_spec.get('short_description', ''))} ([README](../roles/{role}/README.md))",
        ]
        for entry, spec in specs.items():
            options = spec.get("options") or {}
            must = [n for n, o in options.items() if required(o, defaults, n)]
            if entry != "main":
                description = _cell(spec.get("short_description", ""))
                lines += ["", label["entry"].format(entry=entry, description=description)]
            names = ", ".join(f"`{n}`" for n in must)
            lines += ["", label["required"].format(names=names) if must else label["none_required"]]
            lines += ["", label["header"], "| --- | --- | --- | --- |"]
            ranked = sorted(options.items(), key=lambda kv: kv[0] not in must)
            for name, opt in ranked:
                desc = opt.get("description", "")
                if isinstance(desc, list):
                    desc = " ".join(desc)
                shown = label["flag"] if name in must else _default(opt, lang)
                lines.append(f"| `{name}` | {_cell(_type(opt, lang))} | {shown} | {_cell(desc)} |")
    lines += ["", PROD_END]
    return "\n".join(lines)


def render_production(doc: str, lang: str = "en") -> str:
    if PROD_BEGIN not in doc or PROD_END not in doc:
        raise SystemExit(
            f"{PRODUCTION_DOCS[lang].relative_to(REPO)} has no generated-variables markers ({PROD_END!r})"
        )
    head, rest = doc.split(PROD_BEGIN, 1)
    return head + production_section(lang) + rest.split(PROD_END, 1)[1]


def main_production(check: bool) -> int:
    stale = []
    for lang, path in PRODUCTION_DOCS.items():
        rel = path.relative_to(REPO)
        if not path.exists():
            raise SystemExit(f"{rel} is missing (each language of the production quick start has one)")
        old = path.read_text()
        new = render_production(old, lang)
        if new == old:
            continue
        stale.append(str(rel))
        if not check:
            path.write_text(new)
            print(f"role-docs: wrote {rel}", file=sys.stderr)
    if check and stale:
        print(
            "role variables out of date with meta/argument_specs.yml (run scripts/role-docs.py --production):",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    check = "--check" in argv
    if "--production" in argv:
        return main_production(check)
    stale = []
    for role_dir in _role_dirs():
        path = role_dir / "README.md"
        old = path.read_text() if path.exists() else f"# {role_dir.name}\n"
        new = render(old, role_dir)
        if new != old:
            stale.append(str(path.relative_to(REPO)))
            if not check:
                path.write_text(new)
    if check and stale:
        print(
            "role READMEs out of date with meta/argument_specs.yml (run scripts/role-docs.py):",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    for p in stale if not check else []:
        print(f"role-docs: wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
