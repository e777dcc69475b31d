"""The control catalog: one entry per guidance item (A.01-A.69, E.01-E.37, F.01-F.57).

The catalog lives in ``hardening/catalog/{A,E,F}.yml``. Each entry maps an item of CRYPTREC's
Cryptographic Key Management Guidance Part 2 to how ckms meets it (``applicability``), what implements
it (``implemented_by``) and which checks prove it (``checks``).

    python -m hardening.catalog                 # validate and print counts
    python -m hardening.catalog --markdown      # print docs/guidance-items.md
    python -m hardening.catalog --markdown -o docs/guidance-items.md
    python -m hardening.catalog --markdown --lang ja -o docs/guidance-items.ja.md   # title_ja, summary_ja
    python -m hardening.catalog --verify-guidance /path/to/guidance.txt

Reference formats (validated):

    implemented_by  role:<role>[/<task>]      one of the Ansible roles in ROLES, e.g. role:os_hardening/ssh
                    ckms_app:<feature>        a feature of the CA daemon, e.g. ckms_app:clock-guard
                    pulumi:<thing>            the environment model, e.g. pulumi:flows
                    ansible:<playbook>.yml    hardening:<tool>    hsm:<token capability>    doc:docs/<file>.md[#anchor]
    checks          check:<item>[.<letter>].<slug>   e.g. check:F.06.j.ports_closed (slug: 2+ chars [a-z0-9_])
                    the checks that decide the item's status in the report (run on the hosts or by drills)
    tests           test:tests/<path>.py::<name>    supporting evidence from the test suite: listed in the
                    report next to the item, never counted as a host check
    procedure       docs/<file>.md#<anchor>   e.g. docs/operations.md#key-ceremony

The loader is strict: unknown keys, malformed references, missing or duplicated items are errors, all
reported together in one :class:`CatalogError`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: chapter letter -> number of items (A.01-A.69, E.01-E.37, F.01-F.57)
CHAPTERS: dict[str, int] = {"A": 69, "E": 37, "F": 57}
CHAPTER_TITLES: dict[str, str] = {
    "A": "CKMS design principles and operating policy (guidance chapter 2)",
    "E": "Security of key-management devices: access control, cryptographic module, testing (chapter 3)",
    "F": "CKMS operations: physical, OS, network, assurance, assessment, BCP (chapter 4)",
}

APPLICABILITY = ("automated", "procedural", "not-applicable")
STATUSES = ("planned", "implemented")

#: Ansible roles of the architecture (docs: /work/shared/design/architecture.md, "Roles").
ROLES = (
    "os_hardening",
    "integrity",
    "antimalware",
    "audit",
    "router",
    "ids",
    "ntp",
    "ups",
    "hsm_client",
    "ckms_ca",
    "backup",
    "iot_hub",
)

ITEM_ID_RE = re.compile(r"^(?P<chapter>[AEF])\.(?P<num>\d{2})$")
FR_RE = re.compile(r"^FR\d+\.\d+$")
SECTION_RE = re.compile(r"^\d+(\.\d+)*$")
SUBITEM_RE = re.compile(r"^[a-z]$")
PROCEDURE_RE = re.compile(r"^docs/[a-z0-9_\-/]+\.md#[a-z0-9][a-z0-9\-]*$")
_SLUG = r"[a-z0-9][a-z0-9_\-]*"
CHECK_RE = re.compile(r"^check:(?P<item>[AEF]\.\d{2})(?:\.(?P<sub>[a-z]))?\.(?P<slug>[a-z0-9][a-z0-9_]+)$")
TEST_RE = re.compile(r"^test:tests/[A-Za-z0-9_\-/]+\.py(::[A-Za-z_][A-Za-z0-9_\[\]\-.]*)+$")
IMPL_RES: tuple[re.Pattern[str], ...] = (
    re.compile(rf"^role:(?:{'|'.join(ROLES)})(?:/{_SLUG})?$"),
    re.compile(rf"^ckms_app:{_SLUG}(?:/{_SLUG})?$"),
    re.compile(rf"^pulumi:{_SLUG}$"),
    re.compile(r"^ansible:[a-z0-9_\-/]+\.yml$"),
    re.compile(rf"^hardening:{_SLUG}$"),
    re.compile(rf"^hsm:{_SLUG}$"),
    re.compile(r"^doc:docs/[a-z0-9_\-/]+\.md(?:#[a-z0-9][a-z0-9\-]*)?$"),
)

_ITEM_KEYS_REQUIRED = ("id", "fr", "sp800_130", "title_ja", "title_en", "summary_en", "applicability")
_ITEM_KEYS_OPTIONAL = (
    "summary_ja",
    "procedure",
    "reason",
    "implemented_by",
    "checks",
    "tests",
    "status",
    "subitems",
    "note",
)
_SUB_KEYS_REQUIRED = ("title_ja", "title_en", "applicability")
_SUB_KEYS_OPTIONAL = (
    "summary_en",
    "summary_ja",
    "procedure",
    "reason",
    "implemented_by",
    "checks",
    "tests",
    "status",
    "note",
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class CatalogError(ValueError):
    """The catalog is invalid. ``problems`` lists every problem found, one string each."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the control catalog:\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class SubItem:
    """A lettered sub-item of a guidance item (e.g. F.06 j)."""

    letter: str
    title_ja: str
    title_en: str
    applicability: str
    summary_en: str = ""
    summary_ja: str = ""  # the summary in Japanese (docs/guidance-items.ja.md)
    procedure: str | None = None
    reason: str | None = None
    implemented_by: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    status: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Control:
    """One guidance item and how ckms meets it."""

    id: str
    fr: tuple[str, ...]
    sp800_130: str
    title_ja: str
    title_en: str
    summary_en: str
    applicability: str
    summary_ja: str = ""  # the summary in Japanese (docs/guidance-items.ja.md)
    procedure: str | None = None
    reason: str | None = None
    implemented_by: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    status: str | None = None
    subitems: Mapping[str, SubItem] = field(default_factory=dict)
    note: str | None = None
    source: str = ""

    @property
    def chapter(self) -> str:
        return self.id[0]

    def all_checks(self) -> tuple[str, ...]:
        """Checks of the item and of its sub-items, in catalog order, without repeats."""
        seen: dict[str, None] = dict.fromkeys(self.checks)
        for sub in self.subitems.values():
            seen.update(dict.fromkeys(sub.checks))
        return tuple(seen)

    def all_tests(self) -> tuple[str, ...]:
        """Supporting suite tests of the item and of its sub-items (``test:`` references)."""
        seen: dict[str, None] = dict.fromkeys(self.tests)
        for sub in self.subitems.values():
            seen.update(dict.fromkeys(sub.tests))
        return tuple(seen)

    def all_implemented_by(self) -> tuple[str, ...]:
        seen: dict[str, None] = dict.fromkeys(self.implemented_by)
        for sub in self.subitems.values():
            seen.update(dict.fromkeys(sub.implemented_by))
        return tuple(seen)


# --------------------------------------------------------------------------------------------------
# identifiers


def expected_item_ids() -> set[str]:
    """A.01-A.69, E.01-E.37, F.01-F.57 (163 ids)."""
    return {f"{ch}.{n:02d}" for ch, count in CHAPTERS.items() for n in range(1, count + 1)}


@dataclass(frozen=True)
class CheckRef:
    item: str
    sub: str | None
    slug: str


def parse_check_id(check_id: str) -> CheckRef | None:
    """Parse ``check:F.06.j.ports_closed``; ``None`` for a well-formed ``test:`` reference.

    Raises :class:`ValueError` for anything else.
    """
    m = CHECK_RE.match(check_id)
    if m:
        return CheckRef(m["item"], m["sub"], m["slug"])
    if TEST_RE.match(check_id):
        return None
    raise ValueError(
        f"malformed check id {check_id!r} (expected 'check:<item>[.<letter>].<slug>' "
        "or 'test:tests/<path>.py::<name>')"
    )


def is_valid_implementation_ref(ref: str) -> bool:
    return any(r.match(ref) for r in IMPL_RES)


def unknown_items(check_ids: Iterable[str], catalog: Mapping[str, Control]) -> list[str]:
    """Item (or item.letter) references in ``check_ids`` that the catalog does not know.

    ``check_ids`` are check identifiers discovered elsewhere (testinfra modules, the report, ...).
    ``check:F.99.x`` gives ``F.99``; ``check:F.06.m.x`` gives ``F.06.m`` when F.06 has no sub-item m.
    ``test:`` references name no item and are ignored; malformed ids raise :class:`ValueError`.
    """
    unknown: set[str] = set()
    for cid in check_ids:
        ref = parse_check_id(cid)
        if ref is None:
            continue
        control = catalog.get(ref.item)
        if control is None:
            unknown.add(ref.item)
        elif ref.sub is not None and ref.sub not in control.subitems:
            unknown.add(f"{ref.item}.{ref.sub}")
    return sorted(unknown)


def unlisted_checks(check_ids: Iterable[str], catalog: Mapping[str, Control]) -> list[str]:
    """Checks discovered elsewhere that no catalog entry lists (orphans)."""
    listed = {c for control in catalog.values() for c in control.all_checks()}
    return sorted(set(check_ids) - listed)


# --------------------------------------------------------------------------------------------------
# loading and validation


def _as_tuple(value: object, where: str, key: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{where}: '{key}' must be a string or a list of strings")
    return ()


def _text(raw: Mapping[str, object], key: str, where: str, problems: list[str]) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: '{key}' must be a non-empty string")
        return ""
    return value.strip()


def _japanese(raw: Mapping[str, object], key: str, where: str, problems: list[str]) -> str:
    """An optional Japanese text: absent is "", present must be Japanese (not an English copy)."""
    text = _text(raw, key, where, problems)
    if text and text.isascii():
        problems.append(f"{where}: {key} is not Japanese")
    return text


def _check_common(
    where: str,
    item_id: str,
    letter: str | None,
    applicability: str,
    procedure: str | None,
    reason: str | None,
    implemented_by: tuple[str, ...],
    checks: tuple[str, ...],
    tests: tuple[str, ...],
    status: str | None,
    problems: list[str],
    *,
    has_sub_checks: bool = False,
) -> None:
    if applicability not in APPLICABILITY:
        problems.append(f"{where}: applicability {applicability!r} is not one of {', '.join(APPLICABILITY)}")
    if applicability == "procedural" and not procedure:
        problems.append(f"{where}: procedural but no 'procedure' (e.g. docs/operations.md#key-ceremony)")
    if applicability == "not-applicable" and not reason:
        problems.append(f"{where}: not-applicable but no 'reason'")
    if applicability == "automated" and not checks and not has_sub_checks:
        problems.append(f"{where}: automated but lists no check")
    if procedure is not None and not PROCEDURE_RE.match(procedure):
        problems.append(f"{where}: malformed procedure {procedure!r} (expected docs/<file>.md#<anchor>)")
    for ref in implemented_by:
        if not is_valid_implementation_ref(ref):
            problems.append(f"{where}: malformed implemented_by reference {ref!r}")
    if len(set(checks)) != len(checks):
        problems.append(f"{where}: a check is listed twice")
    if len(set(tests)) != len(tests):
        problems.append(f"{where}: a test is listed twice")
    for ref in tests:
        if not TEST_RE.match(ref):
            problems.append(
                f"{where}: malformed test reference {ref!r} (expected 'test:tests/<path>.py::<name>')"
            )
    for cid in checks:
        try:
            parsed = parse_check_id(cid)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if parsed is None:
            problems.append(
                f"{where}: {cid!r} is a suite test: list it under 'tests', 'checks' are host checks"
            )
            continue
        if parsed.item != item_id or parsed.sub != letter:
            expected = f"check:{item_id}{'.' + letter if letter else ''}.<slug>"
            problems.append(f"{where}: check {cid!r} does not name this entry (expected {expected})")
    if status is not None and status not in STATUSES:
        problems.append(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")


def _load_subitem(item_id: str, letter: str, raw: object, source: str, problems: list[str]) -> SubItem | None:
    where = f"{source}: {item_id} {letter})"
    if not SUBITEM_RE.match(letter):
        problems.append(f"{source}: {item_id}: sub-item key {letter!r} must be a single letter a-z")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    for key in raw:
        if key not in _SUB_KEYS_REQUIRED + _SUB_KEYS_OPTIONAL:
            problems.append(f"{where}: unknown key {key!r}")
    for key in _SUB_KEYS_REQUIRED:
        if key not in raw:
            problems.append(f"{where}: missing '{key}'")
    sub = SubItem(
        letter=letter,
        title_ja=_text(raw, "title_ja", where, problems),
        title_en=_text(raw, "title_en", where, problems),
        applicability=str(raw.get("applicability", "")),
        summary_en=_text(raw, "summary_en", where, problems),
        summary_ja=_japanese(raw, "summary_ja", where, problems),
        procedure=raw.get("procedure"),  # type: ignore[arg-type]
        reason=raw.get("reason"),  # type: ignore[arg-type]
        implemented_by=_as_tuple(raw.get("implemented_by"), where, "implemented_by", problems),
        checks=_as_tuple(raw.get("checks"), where, "checks", problems),
        tests=_as_tuple(raw.get("tests"), where, "tests", problems),
        status=raw.get("status"),  # type: ignore[arg-type]
        note=raw.get("note"),  # type: ignore[arg-type]
    )
    _check_common(
        where,
        item_id,
        letter,
        sub.applicability,
        sub.procedure,
        sub.reason,
        sub.implemented_by,
        sub.checks,
        sub.tests,
        sub.status,
        problems,
    )
    return sub


def _load_item(raw: object, chapter: str, source: str, problems: list[str]) -> Control | None:
    if not isinstance(raw, dict):
        problems.append(f"{source}: every entry of 'items' must be a mapping")
        return None
    item_id = str(raw.get("id", ""))
    where = f"{source}: {item_id or '<no id>'}"
    m = ITEM_ID_RE.match(item_id)
    if not m:
        problems.append(f"{where}: malformed id {item_id!r} (expected e.g. A.01)")
        return None
    if m["chapter"] != chapter:
        problems.append(f"{where}: item of chapter {m['chapter']} in the file of chapter {chapter}")
    if not 1 <= int(m["num"]) <= CHAPTERS[m["chapter"]]:
        problems.append(
            f"{where}: {item_id} is outside {m['chapter']}.01-{m['chapter']}.{CHAPTERS[m['chapter']]:02d}"
        )
    for key in raw:
        if key not in _ITEM_KEYS_REQUIRED + _ITEM_KEYS_OPTIONAL:
            problems.append(f"{where}: unknown key {key!r}")
    for key in _ITEM_KEYS_REQUIRED:
        if key not in raw:
            problems.append(f"{where}: missing '{key}'")

    fr = _as_tuple(raw.get("fr"), where, "fr", problems)
    if not fr:
        problems.append(f"{where}: no FR number")
    for f in fr:
        if not FR_RE.match(f):
            problems.append(f"{where}: malformed FR number {f!r} (expected e.g. FR8.4)")
    section = raw.get("sp800_130", "")
    if not isinstance(section, str):  # an unquoted 10.10 would silently become the float 10.1
        problems.append(
            f"{where}: sp800_130 must be a quoted string, not {type(section).__name__} {section!r}"
        )
        section = str(section)
    elif not SECTION_RE.match(section):
        problems.append(f"{where}: malformed sp800_130 section {section!r} (expected e.g. 8.2.1 or 5)")

    title_ja = _text(raw, "title_ja", where, problems)
    if title_ja and title_ja.isascii():
        problems.append(f"{where}: title_ja is not Japanese")
    subitems: dict[str, SubItem] = {}
    raw_subs = raw.get("subitems") or {}
    if not isinstance(raw_subs, dict):
        problems.append(f"{where}: 'subitems' must be a mapping letter -> entry")
        raw_subs = {}
    for letter, raw_sub in raw_subs.items():
        sub = _load_subitem(item_id, str(letter), raw_sub, source, problems)
        if sub is not None:
            subitems[sub.letter] = sub
    if subitems:
        letters = sorted(subitems)
        want = [chr(ord("a") + i) for i in range(len(letters))]
        if letters != want:
            problems.append(f"{where}: sub-items {''.join(letters)} are not a contiguous run from 'a'")

    control = Control(
        id=item_id,
        fr=fr,
        sp800_130=section,
        title_ja=title_ja,
        title_en=_text(raw, "title_en", where, problems),
        summary_en=_text(raw, "summary_en", where, problems),
        applicability=str(raw.get("applicability", "")),
        summary_ja=_japanese(raw, "summary_ja", where, problems),
        procedure=raw.get("procedure"),  # type: ignore[arg-type]
        reason=raw.get("reason"),  # type: ignore[arg-type]
        implemented_by=_as_tuple(raw.get("implemented_by"), where, "implemented_by", problems),
        checks=_as_tuple(raw.get("checks"), where, "checks", problems),
        tests=_as_tuple(raw.get("tests"), where, "tests", problems),
        status=raw.get("status"),  # type: ignore[arg-type]
        subitems=subitems,
        note=raw.get("note"),  # type: ignore[arg-type]
        source=source,
    )
    _check_common(
        where,
        item_id,
        None,
        control.applicability,
        control.procedure,
        control.reason,
        control.implemented_by,
        control.checks,
        control.tests,
        control.status,
        problems,
        has_sub_checks=any(s.checks for s in subitems.values()),
    )
    if control.all_checks() and control.status is None:
        problems.append(f"{where}: lists checks but no 'status' (planned or implemented)")
    return control


def validate_completeness(ids: Iterable[str]) -> list[str]:
    """Problems for missing and duplicated item ids."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    for i, n in sorted(seen.items()):
        if n > 1:
            problems.append(f"{i}: duplicated ({n} entries)")
    for i in sorted(expected_item_ids() - seen.keys()):
        problems.append(f"{i}: missing from the catalog")
    for i in sorted(seen.keys() - expected_item_ids()):
        problems.append(f"{i}: not a guidance item")
    return problems


def load_catalog(directory: str | Path | None = None, *, require_complete: bool = True) -> dict[str, Control]:
    """Load and validate ``<directory>/{A,E,F}.yml``; raise :class:`CatalogError` listing every problem."""
    directory = Path(directory) if directory is not None else CATALOG_DIR
    problems: list[str] = []
    controls: list[Control] = []
    for chapter in CHAPTERS:
        path = directory / f"{chapter}.yml"
        source = path.name
        if not path.exists():
            problems.append(f"{source}: file missing")
            continue
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (safe subclass)
        except yaml.YAMLError as exc:
            problems.append(f"{source}: not valid YAML: {exc}")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
            problems.append(f"{source}: expected a mapping with 'chapter' and a list 'items'")
            continue
        if doc.get("chapter") != chapter:
            problems.append(f"{source}: 'chapter' must be {chapter!r}")
        for raw in doc["items"]:
            control = _load_item(raw, chapter, source, problems)
            if control is not None:
                controls.append(control)
    ids = [c.id for c in controls]
    if require_complete:
        problems.extend(validate_completeness(ids))
    else:
        problems.extend(p for p in validate_completeness(ids) if "duplicated" in p)
    if problems:
        raise CatalogError(problems)
    return {c.id: c for c in sorted(controls, key=lambda c: (list(CHAPTERS).index(c.chapter), c.id))}


# --------------------------------------------------------------------------------------------------
# the guidance text


@dataclass(frozen=True)
class GuidanceItem:
    """What the guidance's requirement table states about an item (facts only: numbers and letters)."""

    id: str
    fr: str
    sp800_130: str | None
    subitems: tuple[str, ...]
    line: int


_HEADER_RE = re.compile(r"^\s*(?P<id>[AEF]\.\d{2})\s+(?P<fr>FR\d+\.\d*)(?P<rest>.*)$")
_SECTION_LINE_RE = re.compile(r"^\s*(?P<sec>\d+(?:\.\d+)*)\s*(?:節|章)\s*$")
_SUB_LINE_RE = re.compile(r"^\s*(?P<letter>[a-z])\)")
_BLOCK_END_MARKERS = ("解説・考慮点", "《", "記載例")


def extract_guidance_items(text: str) -> dict[str, GuidanceItem]:
    """Item ids, FR numbers, SP 800-130 sections and sub-item letters from the guidance text.

    An item is a requirement-table row: a line starting with the item id followed by its FR number
    (``F.06 FR8.4 ...``). An FR number broken over two lines (``F.50 FR6.11`` / ``6``) is rejoined.
    Sub-item letters are the ``a)`` lines up to the next row or the commentary that follows the table.
    Raises :class:`ValueError` if an id has two rows.
    """
    lines = text.splitlines()
    heads = [(n, m) for n, line in enumerate(lines) if (m := _HEADER_RE.match(line))]
    items: dict[str, GuidanceItem] = {}
    for k, (start, m) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        for n in range(start + 1, end):
            if any(marker in lines[n] for marker in _BLOCK_END_MARKERS):
                end = n
                break
        fr = m["fr"]
        if not m["rest"].strip():  # the number may continue on the next non-empty line
            nxt = next((lines[n] for n in range(start + 1, end) if lines[n].strip()), "")
            cont = re.match(r"^\s*(\d+)\s", nxt + " ")
            if cont and fr[-1].isdigit():
                fr += cont.group(1)
        section = None
        for n in range(start + 1, end):
            s = _SECTION_LINE_RE.match(lines[n])
            if s:
                section = s["sec"]
                break
        subs = tuple(s["letter"] for n in range(start, end) if (s := _SUB_LINE_RE.match(lines[n])))
        if m["id"] in items:
            raise ValueError(
                f"{m['id']} has two requirement rows (lines {items[m['id']].line} and {start + 1})"
            )
        items[m["id"]] = GuidanceItem(m["id"], fr, section, subs, start + 1)
    return items


def compare_with_guidance(catalog: Mapping[str, Control], guidance: Mapping[str, GuidanceItem]) -> list[str]:
    """Differences between the catalog and the items extracted from the guidance text."""
    problems: list[str] = []
    for i in sorted(guidance.keys() - catalog.keys()):
        problems.append(f"{i}: in the guidance but not in the catalog")
    for i in sorted(catalog.keys() - guidance.keys()):
        problems.append(f"{i}: in the catalog but not in the guidance")
    for i in sorted(catalog.keys() & guidance.keys()):
        c, g = catalog[i], guidance[i]
        if c.fr != (g.fr,):
            problems.append(f"{i}: catalog FR {', '.join(c.fr)} but the guidance gives {g.fr}")
        if g.sp800_130 is not None and c.sp800_130 != g.sp800_130:
            problems.append(
                f"{i}: catalog SP 800-130 section {c.sp800_130} but the guidance gives {g.sp800_130}"
            )
        if tuple(c.subitems) != g.subitems:
            problems.append(
                f"{i}: catalog sub-items {''.join(c.subitems) or '-'} but the guidance lists {''.join(g.subitems) or '-'}"
            )
    return problems


# --------------------------------------------------------------------------------------------------
# human-readable table


def counts(catalog: Mapping[str, Control]) -> dict[str, dict[str, int]]:
    """chapter -> applicability -> number of items."""
    out = {ch: dict.fromkeys(APPLICABILITY, 0) for ch in CHAPTERS}
    for c in catalog.values():
        out[c.chapter][c.applicability] += 1
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _impl_cell(applicability: str, procedure: str | None, reason: str | None, impl: Iterable[str]) -> str:
    parts = [f"`{r}`" for r in impl]
    if applicability == "procedural" and procedure:
        parts.append(f"procedure: `{procedure}`")
    if applicability == "not-applicable" and reason:
        parts.append(f"reason: {reason}")
    return _cell("<br>".join(parts)) if parts else ""


def _procedure_sections(catalog: Mapping[str, Control], heading: str, columns: str) -> list[str]:
    """The closing table of both languages: each operations section and the entries pointing to it."""
    sections: dict[str, list[str]] = {}
    for c in catalog.values():
        for e, name in ((c, c.id), *((s, f"{c.id} {s.letter})") for s in c.subitems.values())):
            if e.procedure:
                sections.setdefault(e.procedure, []).append(name)
    rows = [f"| `{p}` | {', '.join(names)} |" for p, names in sorted(sections.items())]
    return ["", heading, "", columns, "| --- | --- |", *rows, ""]


def render_markdown(catalog: Mapping[str, Control], lang: str = "en") -> str:
    """docs/guidance-items.md (``lang="ja"``: docs/guidance-items.ja.md), generated from the catalog."""
    if lang == "ja":
        return _render_markdown_ja(catalog)
    if lang != "en":
        raise ValueError(f"no rendering in language {lang!r} (en, ja)")
    out: list[str] = [
        "# Guidance items and how ckms meets them",
        "",
        "<!-- Generated by `python -m hardening.catalog --markdown -o docs/guidance-items.md`; "
        "do not edit by hand: edit hardening/catalog/*.yml. -->",
        "",
        "日本語: [guidance-items.ja.md](guidance-items.ja.md)",
        "",
        "One row per item of CRYPTREC's *Cryptographic Key Management Guidance Part 2* "
        "(A.01-A.69, E.01-E.37, F.01-F.57; lettered sub-items as extra rows). Titles are the project's own "
        "short wording. `automated`: ckms code or roles implement it and a check verifies it; `procedural`: "
        "the named operations section covers it; `not-applicable`: the toy model has no such case. "
        'Check status `planned` means the check is named but not written yet. "+ N suite tests": tests of the '
        "suite listed as supporting evidence (`tests:`), shown in the report but not counted as host checks.",
        "",
        "| chapter | automated | procedural | not-applicable | total |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    total = dict.fromkeys(APPLICABILITY, 0)
    for ch, row in counts(catalog).items():
        out.append(
            f"| {ch} | {row['automated']} | {row['procedural']} | {row['not-applicable']} | {sum(row.values())} |"
        )
        for k, v in row.items():
            total[k] += v
    out.append(
        f"| all | {total['automated']} | {total['procedural']} | {total['not-applicable']} | {sum(total.values())} |"
    )
    for ch in CHAPTERS:
        out += [
            "",
            f"## {ch}: {CHAPTER_TITLES[ch]}",
            "",
            "| ID | FR | SP 800-130 | title | applicability | implemented by | checks |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in catalog.values():
            if c.chapter != ch:
                continue
            n_checks = len(c.checks)
            checks = f"{n_checks} {c.status}" if n_checks else ("-" if not c.subitems else "see sub-items")
            if c.tests:
                checks += f" + {len(c.tests)} suite test{'s' if len(c.tests) > 1 else ''}"
            out.append(
                f"| {c.id} | {', '.join(c.fr)} | {c.sp800_130} | {_cell(c.title_en)} | {c.applicability} "
                f"| {_impl_cell(c.applicability, c.procedure, c.reason, c.implemented_by)} | {checks} |"
            )
            for s in c.subitems.values():
                status = s.status or c.status
                sub_checks = f"{len(s.checks)} {status}" if s.checks else "-"
                if s.tests:
                    sub_checks += f" + {len(s.tests)} suite test{'s' if len(s.tests) > 1 else ''}"
                out.append(
                    f"| {c.id} {s.letter}) | | | {_cell(s.title_en)} | {s.applicability} "
                    f"| {_impl_cell(s.applicability, s.procedure, s.reason, s.implemented_by)} | {sub_checks} |"
                )
    out += _procedure_sections(
        catalog, "## Operations sections the procedural entries point to", "| section | items |"
    )
    return "\n".join(out)


CHAPTER_TITLES_JA: dict[str, str] = {
    "A": "CKMS の設計原則と運用ポリシー（ガイダンス第 2 章）",
    "E": "鍵管理装置のセキュリティ: アクセス制御系、暗号モジュール、テスト（第 3 章）",
    "F": "CKMS の運用: 物理、OS、ネットワーク、保証、アセスメント、BCP（第 4 章）",
}
APPLICABILITY_JA = {"automated": "自動検証", "procedural": "手続き", "not-applicable": "対象外"}
STATUSES_JA = {"planned": "予定", "implemented": "実装済み"}


def _checks_cell_ja(n_checks: int, status: str | None, n_tests: int, has_subitems: bool) -> str:
    cell = f"{n_checks} 件 {STATUSES_JA.get(status or '', status or '')}" if n_checks else "-"
    if not n_checks and has_subitems:
        cell = "下位項目を参照"
    return cell + (f" ＋ 補足テスト {n_tests} 件" if n_tests else "")


def _impl_cell_ja(applicability: str, procedure: str | None, impl: Iterable[str]) -> str:
    """The references as in English; a procedure is labelled in Japanese. A not-applicable entry's reason
    is not repeated: its Japanese summary says why it does not apply."""
    parts = [f"`{r}`" for r in impl]
    if applicability == "procedural" and procedure:
        parts.append(f"手順: `{procedure}`")
    return _cell("<br>".join(parts)) if parts else ""


def _render_markdown_ja(catalog: Mapping[str, Control]) -> str:
    """docs/guidance-items.ja.md: the same tables with title_ja and summary_ja (same headings, for the
    parity test of tests/unit/test_docs_parity.py)."""
    out: list[str] = [
        "# ガイダンスの項目と ckms での対応",
        "",
        "<!-- Generated by `python -m hardening.catalog --markdown --lang ja -o docs/guidance-items.ja.md`; "
        "do not edit by hand: edit hardening/catalog/*.yml. -->",
        "",
        "English: [guidance-items.md](guidance-items.md)",
        "",
        "CRYPTREC『暗号鍵管理ガイダンス Part 2』の項目（A.01–A.69、E.01–E.37、F.01–F.57。記号付きの下位項目は別の行）"
        "ごとに 1 行です。項目名と概要は ckms プロジェクト自身の言葉による要約です。"
        "「自動検証」: ckms のコードまたはロールが実装し、チェックが検証する。「手続き」: 示した運用文書の節が扱う。"
        "「対象外」: トイモデルにその場面がない（理由は概要のとおり）。チェックの「予定」は、名前だけ決まり未作成のチェックです。"
        "「補足テスト N 件」は証跡として挙げたテストスイートのテスト（`tests:`）で、レポートには表示しますが"
        "ホストのチェックとしては数えません。用語は [用語集](glossary.md) に従います。",
        "",
        "| 章 | 自動検証 | 手続き | 対象外 | 計 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    total = dict.fromkeys(APPLICABILITY, 0)
    for ch, row in counts(catalog).items():
        out.append(
            f"| {ch} | {row['automated']} | {row['procedural']} | {row['not-applicable']} | {sum(row.values())} |"
        )
        for k, v in row.items():
            total[k] += v
    out.append(
        f"| 全体 | {total['automated']} | {total['procedural']} | {total['not-applicable']} "
        f"| {sum(total.values())} |"
    )
    for ch in CHAPTERS:
        out += [
            "",
            f"## {ch}: {CHAPTER_TITLES_JA[ch]}",
            "",
            "| ID | FR | SP 800-130 | 項目 | 概要 | 適用 | 実装 | チェック |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in catalog.values():
            if c.chapter != ch:
                continue
            out.append(
                f"| {c.id} | {', '.join(c.fr)} | {c.sp800_130} | {_cell(c.title_ja)} | {_cell(c.summary_ja)} "
                f"| {APPLICABILITY_JA[c.applicability]} "
                f"| {_impl_cell_ja(c.applicability, c.procedure, c.implemented_by)} "
                f"| {_checks_cell_ja(len(c.checks), c.status, len(c.tests), bool(c.subitems))} |"
            )
            for sub in c.subitems.values():
                out.append(
                    f"| {c.id} {sub.letter}) | | | {_cell(sub.title_ja)} | {_cell(sub.summary_ja)} "
                    f"| {APPLICABILITY_JA[sub.applicability]} "
                    f"| {_impl_cell_ja(sub.applicability, sub.procedure, sub.implemented_by)} "
                    f"| {_checks_cell_ja(len(sub.checks), sub.status or c.status, len(sub.tests), False)} |"
                )
    out += _procedure_sections(catalog, "## 手続きの項目が参照する運用文書の節", "| 節 | 項目 |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardening.catalog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="render the human-readable table")
    parser.add_argument("-o", "--output", type=Path, help="write the table to this file instead of stdout")
    parser.add_argument(
        "--lang",
        choices=("en", "ja"),
        default="en",
        help="language of --markdown: ja uses title_ja and summary_ja (docs/guidance-items.ja.md)",
    )
    parser.add_argument("--verify-guidance", type=Path, metavar="TEXT", help="compare with the guidance text")
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.verify_guidance:
        problems = compare_with_guidance(
            catalog, extract_guidance_items(args.verify_guidance.read_text("utf-8"))
        )
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"catalog matches the guidance text ({len(catalog)} items)")
    if args.markdown:
        text = render_markdown(catalog, args.lang)
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    elif not args.verify_guidance:
        for ch, row in counts(catalog).items():
            print(f"{ch}: " + ", ".join(f"{k} {v}" for k, v in row.items()) + f", total {sum(row.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
