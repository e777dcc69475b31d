"""The breakage catalog (``hardening/breakage/breaks.yml``): for each automated A/E item, outside changes
to the deployed system that must make exactly that item's checks fail.

A check that cannot fail proves nothing, and a check that fails on every change proves nothing either.
Each break here names one host, the shell commands that break the control there (run as root through the
automation account), the commands that put it back, and the catalog check IDs that must fail while it is
broken. The runner (:mod:`hardening.breakage.run`) applies them one at a time on the live lab.

Schema (validated by :func:`load_breaks`; every problem is reported together in one :class:`BreaksError`)::

    controls: [check:..., ...]      # cheap checks of other items that must keep passing under every break
    prelude: |                      # shell helpers prepended to every break and restore script
      ...
    breaks:
      - id: a05-policy-oid-changed  # unique slug
        item: A.05                  # an automated A/E item of hardening/catalog
        host: ca1                   # inventory host the commands run on ("controller": this machine)
        what: the profile's policy OID in ckms.toml changed, daemon restarted
        break: |                    # shell (root); must exit 0
          ...
        restore: |                  # shell (root); must exit 0 and leave the item's checks passing
          ...
        fails: [check:A.05.policy_oid_in_issued_certs]   # checks of this item that must fail
        settle_seconds: 0           # optional wait after break/restore (a restarted daemon, a timer)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from hardening.catalog import Control, load_catalog

BREAKS_FILE = Path(__file__).resolve().parent / "breaks.yml"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,60}$")
_ITEM_RE = re.compile(r"^[AE]\.\d{2}$")
_KEYS = {"id", "item", "host", "what", "break", "restore", "fails", "settle_seconds"}


class BreaksError(ValueError):
    """The breakage catalog is malformed; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("breakage catalog:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Break:
    """One outside change to the deployed system and the checks it must make fail."""

    id: str
    item: str
    host: str
    what: str
    break_cmd: str
    restore_cmd: str
    fails: tuple[str, ...]
    settle_seconds: float = 0.0


@dataclass(frozen=True)
class BreakCatalog:
    controls: tuple[str, ...]
    breaks: tuple[Break, ...]
    prelude: str = ""

    def for_items(self, items: set[str] | None) -> list[Break]:
        return [b for b in self.breaks if items is None or b.item in items]


def automated_ae_items(catalog: Mapping[str, Control]) -> dict[str, Control]:
    """The items this catalog must cover: chapters A and E, applicability automated."""
    return {i: c for i, c in catalog.items() if c.chapter in "AE" and c.applicability == "automated"}


def load_breaks(path: Path = BREAKS_FILE, catalog: Mapping[str, Control] | None = None) -> BreakCatalog:
    """Read and validate the breakage catalog against the control catalog."""
    catalog = catalog if catalog is not None else load_catalog()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    if not isinstance(raw, dict) or not isinstance(raw.get("breaks"), list):
        raise BreaksError([f"{path.name}: expected a mapping with a list 'breaks'"])
    unknown_top = set(raw) - {"controls", "prelude", "breaks"}
    if unknown_top:
        problems.append(f"{path.name}: unknown top-level keys {sorted(unknown_top)}")
    all_checks = {c for control in catalog.values() for c in control.all_checks()}
    controls = tuple(raw.get("controls") or ())
    for c in controls:
        if c not in all_checks:
            problems.append(f"controls: {c} is not a check of the catalog")
    breaks: list[Break] = []
    seen: set[str] = set()
    for n, b in enumerate(raw["breaks"]):
        where = f"breaks[{n}]"
        if not isinstance(b, dict):
            problems.append(f"{where}: not a mapping")
            continue
        where = f"break {b.get('id', n)!s}"
        unknown = set(b) - _KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        missing = [k for k in ("id", "item", "host", "what", "break", "restore", "fails") if not b.get(k)]
        if missing:
            problems.append(f"{where}: missing or empty {missing}")
            continue
        if not _ID_RE.match(str(b["id"])):
            problems.append(f"{where}: id must be a slug [a-z0-9-]")
        if b["id"] in seen:
            problems.append(f"{where}: duplicated id")
        seen.add(b["id"])
        item = str(b["item"])
        if not _ITEM_RE.match(item) or item not in catalog:
            problems.append(f"{where}: item {item} is not an A/E item of the catalog")
            continue
        fails = b["fails"]
        if not isinstance(fails, list) or not all(isinstance(f, str) for f in fails):
            problems.append(f"{where}: fails must be a list of check IDs")
            continue
        own = set(catalog[item].all_checks())
        for f in fails:
            if f not in own:
                problems.append(f"{where}: {f} is not a check of {item} in the catalog")
        breaks.append(
            Break(
                id=str(b["id"]),
                item=item,
                host=str(b["host"]),
                what=" ".join(str(b["what"]).split()),
                break_cmd=str(b["break"]),
                restore_cmd=str(b["restore"]),
                fails=tuple(fails),
                settle_seconds=float(b.get("settle_seconds", 0) or 0),
            )
        )
    if problems:
        raise BreaksError(problems)
    return BreakCatalog(controls=controls, breaks=tuple(breaks), prelude=str(raw.get("prelude") or ""))


def uncovered_items(breaks: BreakCatalog, catalog: Mapping[str, Control]) -> list[str]:
    """Automated A/E items that no break covers."""
    covered = {b.item for b in breaks.breaks}
    return sorted(set(automated_ae_items(catalog)) - covered)
