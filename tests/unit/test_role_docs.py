"""Every role's README documents every variable of its meta/argument_specs.yml, mentions no variable of the
role that the spec lacks, and carries the variables table scripts/role-docs.py generates from the spec.
Also: every variable in defaults/main.yml is in the spec (the spec is what ansible-doc and the role's
argument validation see). Pure file parsing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


def _spec_variables(role: Path) -> set[str]:
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    return {name for entry in specs.values() for name in (entry.get("options") or {})}


def _tags(role: Path) -> set[str]:
    """Tag names of the role's tasks (e.g. ntp_config), which READMEs name next to the concerns."""
    tags: set[str] = set()
    for path in (role / "tasks").glob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            value = task.get("tags", [])
            tags.update([value] if isinstance(value, str) else value)
    return tags


def test_every_role_is_covered():
    assert [r.name for r in ROLES] == sorted(
        [
            "antimalware",
            "audit",
            "backup",
            "ckms_ca",
            "hsm_client",
            "ids",
            "integrity",
            "iot_hub",
            "ntp",
            "os_hardening",
            "router",
            "ups",
        ]
    )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_readme_documents_exactly_the_spec(role: Path):
    readme = role / "README.md"
    assert readme.exists(), f"{role.name} has no README.md"
    text = readme.read_text()
    spec = _spec_variables(role)
    assert spec, f"{role.name}: meta/argument_specs.yml lists no variables"
    documented = set(re.findall(r"`([a-z0-9_]+)`", text))
    missing = sorted(spec - documented)
    assert not missing, f"{role.name}/README.md does not document {missing}"
    known = spec | _tags(role)
    unknown = set()
    for match in re.finditer(rf"(?<![\w/.-]){re.escape(role.name)}_[a-z0-9_]*", text):
        name, after = match.group(), text[match.end() : match.end() + 1]
        if after in ("*", "<"):  # a family such as router_dos_* or ntp_<concern>_enabled
            if not any(k.startswith(name) for k in known):
                unknown.add(name + after)
        elif name.rstrip("_") not in known:
            unknown.add(name)
    unknown = sorted(unknown)
    assert not unknown, f"{role.name}/README.md mentions {unknown}, which meta/argument_specs.yml lacks"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_defaults_are_in_the_spec(role: Path):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    extra = sorted(set(defaults) - _spec_variables(role))
    assert not extra, f"{role.name}: defaults/main.yml has {extra}, meta/argument_specs.yml does not"


def test_generated_variable_tables_are_current():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "role-docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
