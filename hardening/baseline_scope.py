"""Which public-baseline exclusion (``hardening/baseline_exclusions.yml``) applies to a rule on a host.

Why a host kind: an exclusion records a limit of the platform the evaluation looked at. A lab container
has no partitions, bootloader or kernel of its own; a VM or a real server has them, so the same failing
rule there is a finding, not a limit. An exclusion with ``hosts:`` applies only to those kinds of host
(``container``, ``vm``); one without applies to all. The kind comes from the evaluation's summary
(``host_kind``, written by ``scripts/openscap-eval.sh``); a summary without one is from a host this
controller did not look at directly, treated as a ``server``, where no container limit holds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

HOST_KINDS = ("container", "vm", "server")


def host_kind(summary: Mapping[str, Any]) -> str:
    """The kind of host an OpenSCAP summary evaluated (see the module docstring)."""
    kind = str(summary.get("host_kind") or "server")
    return kind if kind in HOST_KINDS else "server"


def exclusion_for(rule: str, exclusions: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    """The first exclusion whose ``rule`` pattern matches ``rule`` and that applies to a host of ``kind``."""
    for e in exclusions:
        hosts = e.get("hosts")
        if fnmatch.fnmatchcase(rule, str(e["rule"])) and (not hosts or kind in hosts):
            return e
    return None
