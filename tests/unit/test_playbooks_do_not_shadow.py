"""Nothing next to the playbooks overrides what an inventory says (issue 17).

Variables in a playbook's ``group_vars``/``host_vars`` and play or role ``vars:`` take precedence over the
inventory's group_vars, so an environment value set there (the HSM module, the UPS driver, time sources)
would silently win over the site's inventory. Playbooks may only switch what the playbook itself does
(``<role>_<concern>_enabled`` and the few run-mode switches below); everything else is the inventory's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((REPO / "ansible").glob("*.yml"))
# What a playbook does rather than what the site is: run-mode switches of a role, set by the playbook
# that exists for that mode (site.yml takes the AIDE baseline last; restore.yml deploys onto a restored
# home without a ceremony and re-records the self-test manifest).
# ansible_remote_tmp: where a task that becomes the unprivileged CA user keeps its scratch files.
RUN_MODE = {
    "integrity_aide_baseline_in_play",
    "ckms_ca_ceremony",
    "ckms_ca_selftest_rerecord",
    "ansible_remote_tmp",
}


def _play_vars(node: object, where: str, found: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key in ("vars", "role_vars"):
            if isinstance(node.get(key), dict):
                for name in node[key]:
                    found.setdefault(name, where)
        for value in node.values():
            _play_vars(value, where, found)
    elif isinstance(node, list):
        for item in node:
            _play_vars(item, where, found)


def test_no_variable_directories_next_to_the_playbooks():
    assert PLAYBOOKS, "no playbooks found"
    for name in ("group_vars", "host_vars"):
        assert not (REPO / "ansible" / name).exists(), f"ansible/{name} would shadow the inventory's {name}"


def test_playbooks_set_only_run_mode_switches():
    found: dict[str, str] = {}
    for path in PLAYBOOKS:
        _play_vars(yaml.safe_load(path.read_text()), path.name, found)
    # a tool playbook's own parameters carry its name (report_sign.yml: report_sign_*): no role reads them
    shadowing = {
        n: w
        for n, w in found.items()
        if not n.endswith("_enabled") and n not in RUN_MODE and not n.startswith(Path(w).stem + "_")
    }
    assert not shadowing, f"playbook vars that would override an inventory: {shadowing}"
