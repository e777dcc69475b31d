"""The playbooks run from the repository root as the docs say, and tags select exactly their tasks
(issue 17): `ansible-playbook -i inventories/<env>/hosts.yml ansible/site.yml` finds the roles with no
ANSIBLE_CONFIG (./ansible.cfg), and the roles are imported statically, so a role tag (os_hardening), a
concern tag (os_hardening_firewall) or an item tag (F.06.j) lists only that role's, concern's or item's
tasks. Real ansible-playbook (--syntax-check, --list-tasks: no host is contacted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
INVENTORY = "inventories/production.example/hosts.yml"
PLAYBOOKS = sorted(p.name for p in (REPO / "ansible").glob("*.yml"))
# Ansible's own implicit task, prepended to every role that has meta/argument_specs.yml and tagged
# `always` by ansible-core itself (not by a role): it only validates the role's variables.
ARG_SPEC_TASK = re.compile(r"^Validating arguments against arg spec '[^']+'")
TASK_LINE = re.compile(r"^ {6}(?:(?P<role>[\w.]+) : )?(?P<name>.*?)\tTAGS: \[(?P<tags>[^\]]*)\]$")


def _clean_env() -> dict[str, str]:
    """The caller's environment without any Ansible setting (no ANSIBLE_CONFIG, paths, callbacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{PLAYBOOK.parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["NO_COLOR"] = "1"
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    if not PLAYBOOK.exists():
        pytest.skip("no ansible-playbook in .venv (make deps)")
    return subprocess.run(
        [str(PLAYBOOK), "-i", INVENTORY, *args],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listed(*tags: str) -> list[tuple[str, str, set[str]]]:
    """(role, task name, tags) of every task `site.yml [--tags …] --list-tasks` lists, Ansible's
    argument validation left out."""
    proc = _run("ansible/site.yml", "--list-tasks", *(["--tags", ",".join(tags)] if tags else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = []
    for line in proc.stdout.splitlines():
        m = TASK_LINE.match(line)
        if m and not ARG_SPEC_TASK.match(m["name"]):
            tasks.append((m["role"] or "", m["name"], {t.strip() for t in m["tags"].split(",")}))
    return tasks


def _task_names(path: Path) -> list[str]:
    """Names of the tasks of a task file, as --list-tasks shows them (blocks opened, imports followed)."""
    names: list[str] = []

    def walk(tasks: list[dict]) -> None:
        for task in tasks or []:
            if "block" in task:
                walk(task["block"])
                walk(task.get("rescue", []))
                walk(task.get("always", []))
            elif "ansible.builtin.import_tasks" in task:
                names.extend(_task_names(path.parent / task["ansible.builtin.import_tasks"]))
            else:
                names.append(task["name"])

    walk(yaml.safe_load(path.read_text()))
    return names


def test_syntax_check_from_the_repository_root():
    proc = _run("--syntax-check", *(f"ansible/{p}" for p in PLAYBOOKS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "was not found" not in proc.stderr


def test_the_repository_config_is_found_without_ansible_config():
    if not (PLAYBOOK.parent / "ansible-config").exists():
        pytest.skip("no ansible-config in .venv (make deps)")
    proc = subprocess.run(
        [str(PLAYBOOK.parent / "ansible-config"), "dump", "--only-changed"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"CONFIG_FILE() = {REPO / 'ansible.cfg'}" in proc.stdout
    assert f"DEFAULT_ROLES_PATH({REPO / 'ansible.cfg'}) = ['{REPO / 'roles'}']" in proc.stdout


def test_item_tag_lists_only_that_items_tasks():
    tasks = _listed("F.06.j")
    names = [name for _, name, _ in tasks]
    assert names == _task_names(REPO / "roles/os_hardening/tasks/firewall.yml")
    assert all(name.startswith("F.06 j") for name in names), names
    assert all(role == "os_hardening" and "F.06.j" in tags for role, _, tags in tasks)


def test_concern_tag_lists_only_that_concerns_tasks():
    tasks = _listed("os_hardening_firewall")
    assert [name for _, name, _ in tasks] == _task_names(REPO / "roles/os_hardening/tasks/firewall.yml")


def test_role_tag_lists_the_whole_role_and_nothing_else():
    tasks = _listed("os_hardening")
    assert {role for role, _, _ in tasks} == {"os_hardening"}
    assert [name for _, name, _ in tasks] == _task_names(REPO / "roles/os_hardening/tasks/main.yml")


def test_every_role_tag_selects_exactly_its_role_through_site():
    """Each task of site.yml carries its own role's tag and no other role's, so --tags <role> selects
    exactly that role (the effective tags as ansible-playbook lists them, one run for all roles)."""
    roles = {p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists()}
    tasks = _listed()
    assert {role for role, _, _ in tasks} == roles
    wrong = [(role, name, sorted(tags & roles)) for role, name, tags in tasks if tags & roles != {role}]
    assert wrong == []


def test_no_role_task_is_tagged_always():
    """A task tagged `always` runs on every selection (--tags F.06.j would run it on every host): shared
    set-up carries the tags of the concerns that need it instead."""
    offenders = []
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"^\s*tags:.*\balways\b", line):
                offenders.append(f"{path.relative_to(REPO)}:{line_no}")
    assert offenders == []


def test_a_site_without_a_hub_skips_the_relay_in_check_mode(tmp_path: Path):
    """A site whose IoT hub is not ckms's has no group hub: the terminal's relay tasks are skipped, none of
    them fails on a hub it cannot name (check mode on this machine, connection local: nothing changes)."""
    if not PLAYBOOK.exists():
        pytest.skip("no ansible-playbook in .venv (make deps)")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  vars:\n    ansible_connection: local\n"
        f"    ansible_python_interpreter: {sys.executable}\n"
        "  children:\n    terminal:\n      hosts:\n        term1: {}\n"
    )
    proc = subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), "ansible/site.yml", "--check", "--tags", "iot_hub_relay"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"term1\s*: ok=0 .*failed=0 .*skipped=[1-9]", proc.stdout), proc.stdout[-1500:]
