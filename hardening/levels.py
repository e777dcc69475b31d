"""Verification levels: was a check's claim observed at run time, or only in the configuration?

Why: a lab container shares the build machine's kernel and sees no firmware, so some checks can verify
only the configuration that would produce the behaviour (audit rule files, sysctl.d, the AppArmor
profile's text) and not the behaviour itself (auditd recording, the kernel's values, enforcement,
secure boot). Such a pass is true but weaker; the report shows it as "pass (configuration)" and never
counts it as a plain pass.

A record (one check on one host, ``hardening/checks/conftest.py`` or a drill) is at configuration level
when any of these holds:

* it says so: ``"level": "configuration"`` in the record;
* its evidence has a ``verification level…`` entry whose value begins with ``configuration``
  (what the checks write today when they find themselves in a container);
* the check is one whose claim needs a run-time observation (:data:`RUNTIME_CHECKS`) and it passed with
  a ``limitation`` (``evidence.limit``): what it could not observe is exactly the run-time part.

``--require`` (hardening.report) accepts a configuration-level pass of a run-time check only from a
host that the system inventory (hardening.inventory, ``virtualisation``) shows to be a container --
the platform cannot observe it there, and says so. From a VM, a real host or a host of unknown kind it
is not accepted: there the run-time observation is possible and must be made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Checks whose claim is about the running kernel, firmware or daemon, not about a file: observed only
#: in the configuration, they are not the full claim. (The catalog may carry this per item later as
#: ``runtime_checks:``; until then this list is the one place that says it.)
RUNTIME_CHECKS: frozenset[str] = frozenset(
    {
        "check:A.06.acl_change_audited",
        "check:A.31.kernel_audit_names_operator",
        "check:E.32.secure_boot_enabled",
        "check:F.06.i.usb_storage_disabled",
        "check:F.06.k.apparmor_enforcing",
        "check:F.06.l.kernel_cmdline_hardened",
        "check:F.06.l.kernel_sysctls",
        "check:F.07.secure_boot_enabled",
        "check:F.12.auditd_watches_identity_and_config",
        "check:F.13.audit_config_writable_by_admin_only",
        "check:F.13.auditd_rules_loaded",
        "check:F.14.auditd_records_enriched",
    }
)

#: ``systemd-detect-virt`` answers that mean "a container": it shares another machine's kernel.
CONTAINER_KINDS: frozenset[str] = frozenset(
    {"systemd-nspawn", "lxc", "lxc-libvirt", "docker", "podman", "rkt", "wsl", "proot", "pouch", "openvz"}
)

CONFIGURATION = "configuration"
RUNTIME = "runtime"


def record_level(record: Mapping[str, Any], runtime_checks: Iterable[str] = RUNTIME_CHECKS) -> str:
    """``"configuration"`` or ``"runtime"`` for one check record (see the module docstring)."""
    if record.get("level") == CONFIGURATION:
        return CONFIGURATION
    for ev in record.get("evidence") or []:
        label = str(ev.get("label", "")).lower()
        value = str(ev.get("value", "")).lstrip().lower()
        if label.startswith("verification level") and value.startswith(CONFIGURATION):
            return CONFIGURATION
    if record.get("limitation") and record.get("check") in set(runtime_checks):
        return CONFIGURATION
    return RUNTIME


def level_reason(record: Mapping[str, Any]) -> str:
    """Why the record is at configuration level, in the check's own words (empty if it gave none)."""
    for ev in record.get("evidence") or []:
        if str(ev.get("label", "")).lower().startswith("verification level"):
            return str(ev.get("value", ""))
    return str(record.get("limitation") or record.get("level_reason") or "")


def host_kinds(inventory: Mapping[str, Any] | None) -> dict[str, str]:
    """Host name -> what ``systemd-detect-virt`` said on it ("none" = bare metal), from inventory.json."""
    if not inventory:
        return {}
    return {
        name: str(facts.get("virtualisation", "unknown"))
        for name, facts in (inventory.get("hosts") or {}).items()
        if isinstance(facts, Mapping) and "error" not in facts
    }


def is_container(kind: str | None) -> bool:
    return kind in CONTAINER_KINDS


def accepted_at_configuration(
    record: Mapping[str, Any], kinds: Mapping[str, str], runtime_checks: Iterable[str] = RUNTIME_CHECKS
) -> bool:
    """May ``--require`` accept this configuration-level pass?

    Yes for a check that does not need run-time observation (the configuration is the claim), and for a
    run-time check observed on a container (it cannot do better there). No otherwise.
    """
    if record.get("check") not in set(runtime_checks):
        return True
    return is_container(kinds.get(str(record.get("host"))))
