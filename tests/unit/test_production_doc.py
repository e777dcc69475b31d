"""docs/production.md, the production quick start, against the roles (issue 17), and its Japanese version
docs/production.ja.md (issue 16):

* the per-role variable section of each is what scripts/role-docs.py --production generates from the specs
  (the Japanese one with Japanese headings and labels, the spec's descriptions in English);
* they and inventories/production.example name no variable the roles do not have: every role-, `ckms_`-,
  `vault_`- or `ansible_`-prefixed name in them is a variable of some role's meta/argument_specs.yml, an
  Ansible connection variable, a role or tag name, or one of the few names of INVENTORY_MODEL, each of which
  is itself read by the code it is listed with;
* docs/operations.md marks nothing "planned" that exists: no role, playbook, inventory, hardening check or
  `ckms` command that is in the tree.
Pure file parsing (and the CLI's argument parser)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "production.md"
DOC_JA = REPO / "docs" / "production.ja.md"
BEGIN_MARK = "<!-- BEGIN GENERATED: role variables"
END_MARK = "<!-- END GENERATED: role variables -->"
# Per language: the document, how its generated section heads a role, how it flags a required variable.
DOCS = {
    "en": (DOC, "### {role}", "**required**"),
    "ja": (DOC_JA, "### {role} ロール", "**必須**"),
}
OPERATIONS = REPO / "docs" / "operations.md"
EXAMPLE = REPO / "inventories" / "production.example"
ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())
PLAYBOOKS = sorted(p.name for p in (REPO / "ansible").glob("*.yml"))

# Ansible's own connection variables that the doc and the example inventory set.
ANSIBLE_VARIABLES = {
    "ansible_host",
    "ansible_user",
    "ansible_port",
    "ansible_become",
    "ansible_become_method",
    "ansible_python_interpreter",
    "ansible_ssh_private_key_file",
    "ansible_ssh_common_args",
}

# Names that are not a role's variable but that the inventory sets (the environment model ckms_lab.inventory
# generates for the lab) or that the roles define otherwise, with the code that reads them. Keep it short:
# a site-specific value belongs in a role's argument_specs.
INVENTORY_MODEL = {
    "ckms_environment": "roles",  # onprem / lab
    "ckms_controller_address": "roles",  # management sources, the automation account's source
    "ckms_time_sources": "roles",  # default of ntp_servers
    "ckms_flows": "roles",  # router, host firewalls, IDS
    "ckms_addresses": "roles",  # per host: address on each segment
    "ckms_role": "roles",  # per host: its endpoint name in the flows
    "ckms_segments": "hardening/checks",  # the segments (the router check reads the vpn segment)
    "vault_hsm_client_user_pin": "roles",  # the vault's secret, default of hsm_client_user_pin
    "vault_os_hardening_bootloader_password_hash": "roles",  # default of os_hardening_bootloader_password_hash
    "ckms_automation": "roles",  # not a variable: the auditd key of the automation account's sudo use
    "ckms_hsm_cmvp_certificate": "hardening",  # declared HSM validation, recorded by the system inventory
}
# Where "used in roles" looks: role code, not READMEs, specs or Molecule scenarios.
ROLE_CODE_DIRS = ("tasks", "defaults", "vars", "handlers", "templates", "files")


def _spec_variables() -> set[str]:
    names: set[str] = set()
    for role in ROLES:
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        names |= {name for entry in specs.values() for name in (entry.get("options") or {})}
    return names


def _task_tags(tasks: list) -> set[str]:
    tags: set[str] = set()
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        value = task.get("tags", [])
        tags.update([value] if isinstance(value, str) else value)
        for key in ("block", "rescue", "always"):
            tags |= _task_tags(task.get(key) or [])
    return tags


def _tags() -> set[str]:
    tags: set[str] = set()
    for role in ROLES:
        for path in (role / "tasks").glob("*.yml"):
            tags |= _task_tags(yaml.safe_load(path.read_text()))
    return tags


def _known_names() -> set[str]:
    return _spec_variables() | ANSIBLE_VARIABLES | set(INVENTORY_MODEL) | {r.name for r in ROLES} | _tags()


_PREFIXES = sorted({f"{r.name}_" for r in ROLES} | {"ckms_", "vault_", "ansible_"}, key=len, reverse=True)
# A prefixed lower-case identifier that is not part of a path, a file or module name (ckms_lab.inventory,
# roles/ckms_ca/...), a hyphenated name or an upper-case environment variable. ASCII word characters only, so
# that a name written right next to Japanese text (「ckms_ca_nameを」) is still seen.
_NAME = re.compile(
    r"(?<![\w/.\-])((?:" + "|".join(map(re.escape, _PREFIXES)) + r")[a-z0-9_]*)(?![\w/\-]|\.\w)",
    re.ASCII,
)


def _unknown_names(text: str, known: set[str]) -> list[str]:
    unknown = set()
    for match in _NAME.finditer(text):
        name, after = match.group(1), text[match.end() : match.end() + 1]
        if after in ("*", "<") and name.endswith("_"):  # a family: router_dos_*, ntp_<concern>_enabled
            if not any(k.startswith(name) for k in known):
                unknown.add(name + after)
        elif name.rstrip("_") not in known:
            unknown.add(name)
    return sorted(unknown)


def _example_files() -> list[Path]:
    return sorted(p for p in EXAMPLE.rglob("*") if p.is_file())


def _generated(text: str) -> str:
    """The generated section of a production doc (between the markers)."""
    assert BEGIN_MARK in text and END_MARK in text
    return text.split(BEGIN_MARK, 1)[1].split(END_MARK, 1)[0]


def _hand_written(text: str) -> str:
    """A production doc without its generated section."""
    head, rest = text.split(BEGIN_MARK, 1)
    return head + rest.split(END_MARK, 1)[1]


def _role_docs_module():
    spec = importlib.util.spec_from_file_location("role_docs", REPO / "scripts" / "role-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_role_variables_are_current():
    """role-docs.py --production --check covers both languages."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "role-docs.py"), "--production", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("lang", sorted(DOCS))
def test_generated_section_has_every_role_and_variable(lang: str):
    path, heading, _ = DOCS[lang]
    generated = _generated(path.read_text())
    for role in ROLES:  # every role has its table, every spec variable its row
        assert f"\n{heading.format(role=role.name)}\n" in generated, (
            f"{path.name} has no variables of {role.name}"
        )
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", generated, re.M))
    assert _spec_variables() <= documented, sorted(_spec_variables() - documented)


def test_japanese_section_is_the_generated_one():
    """The Japanese section is rendered in Japanese, and --check would notice it going stale."""
    role_docs = _role_docs_module()
    text = DOC_JA.read_text()
    assert role_docs.render_production(text, "ja") == text
    generated = _generated(text)
    assert "| 変数 | 型 | 既定値 | 説明 |" in generated and "| variable |" not in generated
    stale = text.replace("### backup ロール", "### backup", 1)
    assert role_docs.render_production(stale, "ja") != stale
    english = role_docs.production_section("en")
    assert role_docs.production_section("ja") != english
    # the same rows in the same order: only labels differ, never which variables are listed
    names = re.compile(r"^\| `([a-z0-9_]+)` \|", re.M)
    assert names.findall(generated) == names.findall(english)


@pytest.mark.parametrize("lang", sorted(DOCS))
def test_required_variables_are_flagged(lang: str):
    """A spec variable with neither a spec default nor a role default is marked required in the doc."""
    path, _, flag = DOCS[lang]
    text = path.read_text()
    for role in ROLES:
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        for entry in specs.values():
            for name, opt in (entry.get("options") or {}).items():
                if opt.get("required") or ("default" not in opt and name not in defaults):
                    assert re.search(rf"^\| `{name}` \| [^|]*\| {re.escape(flag)} \|", text, re.M), (
                        f"{role.name}: {name} is required but not flagged in {path.name}"
                    )


def test_production_doc_names_only_variables_the_roles_have():
    unknown = _unknown_names(DOC.read_text(), _known_names())
    assert not unknown, f"docs/production.md names {unknown}, which no role's argument_specs has"


def test_japanese_production_doc_names_only_variables_the_roles_have():
    """The hand-written text of docs/production.ja.md (the generated section is checked above)."""
    unknown = _unknown_names(_hand_written(DOC_JA.read_text()), _known_names())
    assert not unknown, f"docs/production.ja.md names {unknown}, which no role's argument_specs has"


def test_name_check_sees_names_next_to_japanese_text():
    known = _known_names()
    assert _unknown_names("値は ckms_ca_no_such_nameで設定します", known) == ["ckms_ca_no_such_name"]
    assert _unknown_names("値は「ckms_ca_name」で設定します", known) == []


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: str(p.relative_to(EXAMPLE)))
def test_example_inventory_names_only_variables_the_roles_have(path: Path):
    text = path.read_text()
    unknown = _unknown_names(text, _known_names())
    if path.suffix in (".yml", ".example"):  # every YAML key too, prefixed or not
        keys = set(re.findall(r"^\s*([a-z][a-z0-9_]*):", text, re.M))
        prefixed = {k for k in keys if k.startswith(tuple(_PREFIXES))}
        unknown = sorted(set(unknown) | (prefixed - _known_names()))
    assert not unknown, f"{path.relative_to(REPO)} names {unknown}, which no role's argument_specs has"


@pytest.mark.parametrize("name", sorted(INVENTORY_MODEL))
def test_allowlisted_names_are_used_by_the_code(name: str):
    where = INVENTORY_MODEL[name]
    if where == "roles":
        files = [f for role in ROLES for d in ROLE_CODE_DIRS for f in (role / d).rglob("*") if f.is_file()]
    else:
        files = [f for f in (REPO / where).rglob("*") if f.is_file() and f.suffix in (".py", ".yml", ".j2")]
    pattern = re.compile(rf"(?<![\w]){re.escape(name)}(?!\w)")
    users = [f for f in files if pattern.search(f.read_text(errors="replace"))]
    assert users, f"{name} is allowlisted for docs/production.md but nothing in {where}/ reads it"


# ------------------------------------------------------------------ operations.md: nothing "planned" that exists
def _check_ids() -> set[str]:
    ids: set[str] = set()
    for path in (REPO / "hardening" / "checks").glob("*.py"):
        ids |= set(re.findall(r"mark\.check\(\s*\"(check:[^\"]+)\"", path.read_text()))
    for path in (REPO / "tests" / "lab" / "drills").glob("*.py"):
        ids |= set(re.findall(r"check:[AEF]\.\d{2}(?:\.[a-z])?\.[a-z0-9_]+", path.read_text()))
    return ids


def _cli_commands() -> set[str]:
    """'ckms X' and 'ckms X Y' for every command and subcommand of the CLI."""
    sys.path.insert(0, str(REPO))
    from ckms_app.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: str) -> set[str]:
        out: set[str] = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.add(f"{prefix} {name}")
                    out |= walk(sub, f"{prefix} {name}")
        return out

    return walk(build_parser(), "ckms")


def _existing_things() -> list[tuple[str, re.Pattern[str]]]:
    things: list[tuple[str, re.Pattern[str]]] = []
    for role in ROLES:
        r = re.escape(role.name)
        things.append((f"role {role.name}", re.compile(rf"`{r}[`/]|roles/{r}\b|\b{r} roles?\b", re.I)))
    for book in PLAYBOOKS:
        things.append((f"playbook {book}", re.compile(rf"(?<![\w-]){re.escape(book)}\b")))
    things.append(("the production inventory", re.compile(r"inventories/|production inventory")))
    for cid in _check_ids():
        things.append((cid, re.compile(re.escape(cid) + r"(?![\w.])")))
    for cmd in _cli_commands():
        things.append((f"`{cmd}`", re.compile(r"`" + re.escape(cmd) + r"(?![\w-])")))
    return things


def _planned_clauses(text: str) -> list[tuple[int, str]]:
    """The clause each "planned" qualifies: back to the previous sentence, cell, item or paragraph break
    (an opening parenthesis does not end it: "`x` *(planned)*" and "(`x`, planned)" both qualify x)."""
    out = []
    boundary = re.compile(r"(?:[.;:!?]\s|\|\s|\n\s*\n|\n\s*(?:[-*]|\d+\.)\s|\*\*\s|\bplanned\b)")
    for match in re.finditer(r"\bplanned\b", text, re.I):
        head = text[: match.start()]
        starts = [m.end() for m in boundary.finditer(head)]
        start = starts[-1] if starts else 0
        out.append((text.count("\n", 0, match.start()) + 1, text[start : match.start()]))
    return out


def test_operations_marks_nothing_planned_that_exists():
    things = _existing_things()
    wrong = []
    for line, clause in _planned_clauses(OPERATIONS.read_text()):
        hits = [name for name, pattern in things if pattern.search(clause)]
        if hits:
            wrong.append(f"line {line}: {', '.join(sorted(hits))}")
    assert not wrong, "docs/operations.md calls existing things planned:\n  " + "\n  ".join(wrong)
