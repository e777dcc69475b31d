#!/usr/bin/env python3
"""Write the variables section of every role's README from its meta/argument_specs.yml.

Each README keeps its own prose; the table between the markers below is generated (one table per entry
point: main, and e.g. ckms_ca's terminal or backup's restore). Edit the spec, then run this script.
  scripts/role-docs.py            rewrite the sections (appended to a README that has none)
  scripts/role-docs.py --check    exit 1 naming each README whose section is missing or stale
  scripts/role-docs.py --production [--check]
                                  the same for the per-role variable tables of docs/production.md (between
                                  PROD_BEGIN and PROD_END; required variables flagged)
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


def _default(opt: dict) -> str:
    if "default" not in opt:
        return "—"
    value = opt["default"]
    if isinstance(value, str):
        shown = value
    else:
        shown = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(shown) > DEFAULT_WIDTH:
        return "see `defaults/main.yml`"
    return f"`{_cell(shown)}`" if shown else '`""`'


def _type(opt: dict) -> str:
    kind = opt.get("type", "str")
    if kind == "list" and "elements" in opt:
        kind = f"list of {opt['elements']}"
    if "choices" in opt:
        kind += " (" + ", ".join(str(c) for c in opt["choices"]) + ")"
    if opt.get("required"):
        kind += ", required"
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


def production_section() -> str:
    """Per-role variable tables for docs/production.md, required variables flagged and listed first."""
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
            f"### {role}",
            "",
            f"{_cell(main_spec.get('short_description', ''))} ([README](../roles/{role}/README.md))",
        ]
        for entry, spec in specs.items():
            options = spec.get("options") or {}
            must = [n for n, o in options.items() if required(o, defaults, n)]
            if entry != "main":
                lines += [
                    "",
                    f"Entry point `{entry}` (`tasks_from: {entry}`): {_cell(spec.get('short_description', ''))}",
                ]
            lines += [
                "",
                "Required: "
                + (
                    ", ".join(f"`{n}`" for n in must)
                    if must
                    else "none (each variable has a spec or role default)."
                ),
            ]
            lines += ["", "| variable | type | default | description |", "| --- | --- | --- | --- |"]
            ranked = sorted(options.items(), key=lambda kv: kv[0] not in must)
            for name, opt in ranked:
                desc = opt.get("description", "")
                if isinstance(desc, list):
                    desc = " ".join(desc)
                shown = "**required**" if name in must else _default(opt)
                lines.append(f"| `{name}` | {_cell(_type(opt))} | {shown} | {_cell(desc)} |")
    lines += ["", PROD_END]
    return "\n".join(lines)


def render_production(doc: str) -> str:
    if PROD_BEGIN not in doc or PROD_END not in doc:
        raise SystemExit(
            f"{PRODUCTION_DOC.relative_to(REPO)} has no generated-variables markers ({PROD_END!r})"
        )
    head, rest = doc.split(PROD_BEGIN, 1)
    return head + production_section() + rest.split(PROD_END, 1)[1]


def main_production(check: bool) -> int:
    old = PRODUCTION_DOC.read_text()
    new = render_production(old)
    if new == old:
        return 0
    if check:
        print(
            "docs/production.md: role variables out of date with meta/argument_specs.yml"
            " (run scripts/role-docs.py --production)",
            file=sys.stderr,
        )
        return 1
    PRODUCTION_DOC.write_text(new)
    print("role-docs: wrote docs/production.md", file=sys.stderr)
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
