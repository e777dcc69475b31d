#!/usr/bin/env python3
"""Write the variables section of every role's README from its meta/argument_specs.yml.

Each README keeps its own prose; the table between the markers below is generated (one table per entry
point: main, and e.g. ckms_ca's terminal or backup's restore). Edit the spec, then run this script.
  scripts/role-docs.py            rewrite the sections (appended to a README that has none)
  scripts/role-docs.py --check    exit 1 naming each README whose section is missing or stale
tests/unit/test_role_docs.py runs --check and checks the READMEs against the specs.
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


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for role_dir in sorted(
        p for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists()
    ):
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
