"""Does the catalog's evidence exist? Named checks, cited documents, tools and tests, per item.

Why: the report's status comes from the check results it is given, so a check nobody wrote, a document
that was never written or a tool that does not exist would show as "not run" at best and vanish from
"0 failing" at worst. This module reads the tree itself: every check the catalog names must be defined
by a hardening check module (``@pytest.mark.check("check:…")`` in ``hardening/checks``) or run by a
drill (``tests/lab/drills``); every automated item or sub-item must name at least one check; every
``doc:`` and ``procedure`` must be a file with that anchor; every ``role:``, ``ansible:`` and ``test:``
reference must exist; every abstract reference (``ckms_app:``, ``pulumi:``, ``hsm:``, ``hardening:``)
must be listed in ``hardening/catalog/implementations.yml`` with files that exist. The report lists the
gaps and fails a required chapter that has one.

    python -m hardening.coverage            # print the gaps; exit 1 if there is any
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from hardening.catalog import CATALOG_DIR, REPO_ROOT, Control, SubItem, load_catalog

CHECKS_DIR = REPO_ROOT / "hardening" / "checks"
DRILLS_DIR = REPO_ROOT / "tests" / "lab" / "drills"
IMPLEMENTATIONS = CATALOG_DIR / "implementations.yml"

_MARKER_RE = re.compile(r"""\.check\(\s*["'](check:[^"']+)["']""")
_DRILL_RE = re.compile(
    r"""["'](check:[AEF]\.\d{2}(?:\.[a-z])?\.[a-z0-9_]+)["']"""
)  # a whole literal, not prose
_HEADING_RE = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_EXPLICIT_ANCHOR_RE = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']|\{#([A-Za-z0-9\-_]+)\}""")


@dataclass(frozen=True)
class Gap:
    """One missing piece of evidence for one item (``item`` is ``A.05`` or ``F.06 j)``)."""

    item: str
    kind: str  # no-check | missing-check | missing-reference
    detail: str

    def __str__(self) -> str:
        return f"{self.item}: {self.kind}: {self.detail}"


def implemented_checks(checks_dir: Path | None = None, drills_dir: Path | None = None) -> dict[str, str]:
    """Check ID -> the file that defines it (a check module's marker, or a drill that records it)."""
    checks_dir = checks_dir or CHECKS_DIR
    drills_dir = drills_dir or DRILLS_DIR
    found: dict[str, str] = {}
    # test_*.py run in every report; *_check.py (the public baseline) where the caller asks for them
    for path in sorted([*checks_dir.glob("test_*.py"), *checks_dir.glob("*_check.py")]):
        for cid in _MARKER_RE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(cid, _rel(path))
    for path in sorted(drills_dir.glob("*.py")) if drills_dir.is_dir() else []:
        for cid in _DRILL_RE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(cid, _rel(path))
    return found


def load_implementations(path: Path = IMPLEMENTATIONS) -> dict[str, list[str]]:
    """``ckms_app:crl`` -> its files, from implementations.yml."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {f"{kind}:{name}": list(files) for kind, names in doc.items() for name, files in names.items()}


def markdown_anchors(path: Path) -> set[str]:
    """The anchors a Markdown file offers: GitHub-style heading slugs and explicit ids."""
    return _anchors_cached(path.resolve(), path.stat().st_mtime_ns)


@cache
def _anchors_cached(path: Path, _mtime: int) -> set[str]:
    text = path.read_text(encoding="utf-8")
    anchors = {_slug(h) for h in _HEADING_RE.findall(text)}
    for a, b in _EXPLICIT_ANCHOR_RE.findall(text):
        anchors.add(a or b)
    return anchors


def _slug(heading: str) -> str:
    text = re.sub(r"`|\*\*|\*|_(?=\w)|\[|\]\([^)]*\)", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def resolve_reference(
    ref: str, implementations: Mapping[str, list[str]], repo: Path = REPO_ROOT
) -> str | None:
    """None if ``ref`` (an implemented_by, procedure or test reference) exists, else why not."""
    if ref.startswith("doc:") or ref.startswith("docs/"):
        target = ref.removeprefix("doc:")
        file, _, anchor = target.partition("#")
        path = repo / file
        if not path.is_file():
            return f"{ref}: {file} does not exist"
        if anchor and anchor not in markdown_anchors(path):
            return f"{ref}: {file} has no section #{anchor}"
        return None
    if ref.startswith("role:"):
        role, _, task = ref.removeprefix("role:").partition("/")
        if not (repo / "roles" / role / "tasks" / "main.yml").is_file():
            return f"{ref}: role {role} does not exist"
        if task and not (repo / "roles" / role / "tasks" / f"{task}.yml").is_file():
            return f"{ref}: roles/{role}/tasks/{task}.yml does not exist"
        return None
    if ref.startswith("ansible:"):
        file = ref.removeprefix("ansible:")
        return None if (repo / file).is_file() else f"{ref}: {file} does not exist"
    if ref.startswith("test:"):
        file, _, names = ref.removeprefix("test:").partition("::")
        path = repo / file
        if not path.is_file():
            return f"{ref}: {file} does not exist"
        name = names.split("::")[-1].split("[")[0]
        if name and not re.search(
            rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", path.read_text(), re.M
        ):
            return f"{ref}: {file} defines no {name}"
        return None
    files = implementations.get(ref)
    if files is None:
        return f"{ref}: not listed in hardening/catalog/implementations.yml"
    missing = [f for f in files if not (repo / f).exists()]
    if not files or missing:
        return f"{ref}: implementations.yml names files that do not exist: {missing or 'none listed'}"
    return None


def reference_paths(ref: str, implementations: Mapping[str, list[str]]) -> list[str]:
    """The repository paths a reference points at (for links in the report), ``#anchor`` kept."""
    if ref.startswith("doc:") or ref.startswith("docs/"):
        return [ref.removeprefix("doc:")]
    if ref.startswith("role:"):
        role, _, task = ref.removeprefix("role:").partition("/")
        return [f"roles/{role}/tasks/{task}.yml" if task else f"roles/{role}"]
    if ref.startswith("ansible:"):
        return [ref.removeprefix("ansible:")]
    if ref.startswith("test:"):
        return [ref.removeprefix("test:").partition("::")[0]]
    return list(implementations.get(ref, []))


def coverage_gaps(
    catalog: Mapping[str, Control],
    *,
    checks: Mapping[str, str] | None = None,
    implementations: Mapping[str, list[str]] | None = None,
    repo: Path = REPO_ROOT,
) -> list[Gap]:
    """Every gap of every item (automated, procedural; not-applicable items cite nothing)."""
    checks = implemented_checks() if checks is None else checks
    implementations = load_implementations() if implementations is None else implementations
    gaps: list[Gap] = []
    for c in catalog.values():
        if c.applicability == "not-applicable":
            continue
        entries: list[tuple[str, Control | SubItem]] = [(c.id, c)]
        entries += [(f"{c.id} {s.letter})", s) for s in c.subitems.values()]
        for name, e in entries:
            applicability = e.applicability
            if applicability == "not-applicable":
                continue
            named = list(e.checks)
            if applicability == "automated" and not named and not (e is c and c.all_checks()):
                gaps.append(Gap(name, "no-check", "marked automated but names no check"))
            gaps += [
                Gap(name, "missing-check", f"{cid} is defined by no check module or drill")
                for cid in named
                if cid not in checks
            ]
            refs = list(e.implemented_by) + list(e.tests)
            procedure = e.procedure
            if procedure:
                refs.append(procedure)
            for ref in refs:
                why = resolve_reference(ref, implementations, repo)
                if why is not None:
                    gaps.append(Gap(name, "missing-reference", why))
    return gaps


def gaps_by_item(gaps: Iterable[Gap]) -> dict[str, list[Gap]]:
    """Gaps keyed by item ID (a sub-item's gaps under its item)."""
    out: dict[str, list[Gap]] = {}
    for g in gaps:
        out.setdefault(g.item[:4], []).append(g)
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    gaps = coverage_gaps(load_catalog())
    for g in gaps:
        print(g)
    print(f"{len(gaps)} gap(s)")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
