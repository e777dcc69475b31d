"""The control catalog (hardening/catalog/*.yml) covers every guidance item exactly once, and is well formed."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hardening import catalog as cat  # noqa: E402
from hardening.catalog import (  # noqa: E402
    CatalogError,
    compare_with_guidance,
    expected_item_ids,
    extract_guidance_items,
    load_catalog,
    parse_check_id,
    render_markdown,
    unknown_items,
    unlisted_checks,
)

# The guidance text is not part of the repository; point CKMS_GUIDANCE_TEXT at it (default: the shared seed).
GUIDANCE = Path(os.environ.get("CKMS_GUIDANCE_TEXT", "/work/shared/seed/000_eabe4f69c49a37d7.txt"))
needs_guidance = pytest.mark.skipif(not GUIDANCE.exists(), reason=f"guidance text not found at {GUIDANCE}")


@pytest.fixture(scope="module")
def catalog() -> dict[str, cat.Control]:
    return load_catalog()


@pytest.fixture(scope="module")
def guidance_text() -> str:
    return GUIDANCE.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- the real catalog


def test_catalog_has_every_item_exactly_once(catalog):
    assert set(catalog) == expected_item_ids()
    assert len(expected_item_ids()) == 163
    raw_ids = [
        item["id"]
        for ch in "AEF"
        for item in yaml.safe_load((cat.CATALOG_DIR / f"{ch}.yml").read_text(encoding="utf-8"))["items"]
    ]
    duplicates = sorted({i for i in raw_ids if raw_ids.count(i) > 1})
    assert not duplicates, f"duplicated items: {duplicates}"
    assert sorted(raw_ids) == sorted(expected_item_ids())


@pytest.mark.parametrize("chapter,count", [("A", 69), ("E", 37), ("F", 57)])
def test_chapter_sizes(catalog, chapter, count):
    assert sum(1 for c in catalog.values() if c.chapter == chapter) == count


def test_automated_items_have_checks(catalog):
    missing = [c.id for c in catalog.values() if c.applicability == "automated" and not c.all_checks()]
    missing += [
        f"{c.id} {s.letter})"
        for c in catalog.values()
        for s in c.subitems.values()
        if s.applicability == "automated" and not s.checks
    ]
    assert not missing, f"automated without a check: {missing}"


def test_procedural_and_not_applicable_are_justified(catalog):
    entries = [(c.id, c) for c in catalog.values()]
    entries += [(f"{c.id} {s.letter})", s) for c in catalog.values() for s in c.subitems.values()]
    bad = [name for name, e in entries if e.applicability == "procedural" and not e.procedure]
    bad += [
        name for name, e in entries if e.applicability == "not-applicable" and not (e.reason or "").strip()
    ]
    assert not bad


def test_references_are_well_formed(catalog):
    for c in catalog.values():
        for ref in c.all_implemented_by():
            assert cat.is_valid_implementation_ref(ref), (c.id, ref)
        for cid in c.all_checks():
            parse_check_id(cid)  # raises on a malformed id


def test_suite_test_references_resolve(catalog):
    """Every ``tests:`` reference names a test function that exists, so the report never cites a ghost."""
    missing = []
    for c in catalog.values():
        for ref in c.all_tests():
            path, *names = ref.removeprefix("test:").split("::")
            source = REPO / path
            name = names[-1].split("[")[0]
            if not source.is_file() or not re.search(
                rf"^\s*(async )?def {re.escape(name)}\(", source.read_text(), re.MULTILINE
            ):
                missing.append((c.id, ref))
    assert missing == []


def test_checks_name_known_items_and_are_unique(catalog):
    all_checks = [cid for c in catalog.values() for cid in c.all_checks()]
    assert unknown_items(all_checks, catalog) == []
    assert len(all_checks) == len(set(all_checks)), "a check id is listed by two entries"


def test_items_with_checks_have_a_status(catalog):
    for c in catalog.values():
        if c.all_checks():
            assert c.status in cat.STATUSES, c.id


def test_every_architecture_role_is_used(catalog):
    used = {
        ref.split(":", 1)[1].split("/")[0]
        for c in catalog.values()
        for ref in c.all_implemented_by()
        if ref.startswith("role:")
    }
    assert used == set(cat.ROLES)


def test_lettered_sub_items_recorded(catalog):
    # verified against the text in test_catalog_matches_guidance_text; here a fixed expectation
    assert "".join(catalog["F.06"].subitems) == "abcdefghijkl"
    assert {i: "".join(c.subitems) for i, c in catalog.items() if c.subitems} == {
        "E.05": "abcde",
        "E.07": "abcd",
        "F.06": "abcdefghijkl",
        "F.10": "abc",
        "F.11": "ab",
        "F.18": "ab",
        "F.21": "ab",
        "F.22": "abcd",
        "F.23": "abcdefg",
        "F.24": "abcd",
        "F.50": "abc",
    }


def test_markdown_table_is_up_to_date(catalog):
    committed = (REPO / "docs" / "guidance-items.md").read_text(encoding="utf-8")
    assert committed == render_markdown(catalog), (
        "docs/guidance-items.md is stale: run `python -m hardening.catalog --markdown -o docs/guidance-items.md`"
    )


def test_procedure_anchors_exist_once_operations_doc_exists(catalog):
    ops = REPO / "docs" / "operations.md"
    if not ops.exists():
        pytest.skip("docs/operations.md not written yet")
    anchors = set()
    for line in ops.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).strip().replace(" ", "-"))
        anchors.update(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    wanted = {
        e.procedure.split("#", 1)[1]
        for c in catalog.values()
        for e in (c, *c.subitems.values())
        if e.procedure and e.procedure.startswith("docs/operations.md#")
    }
    assert not sorted(wanted - anchors), f"operations.md lacks sections: {sorted(wanted - anchors)}"


# ---------------------------------------------------------------------------------------------- the guidance text


@needs_guidance
def test_item_ids_extracted_by_regex_match_catalog(catalog, guidance_text):
    # a requirement-table row starts with the item id followed by its FR number
    rows = re.findall(r"^\s*([AEF]\.\d{2})\s+FR\d", guidance_text, flags=re.MULTILINE)
    assert len(rows) == len(set(rows)) == 163
    assert set(rows) == set(catalog)
    # every item id mentioned anywhere in the text is one of them
    mentioned = set(re.findall(r"(?<![\w.])([AEF]\.\d{2})(?!\d)", guidance_text))
    assert mentioned <= set(catalog), sorted(mentioned - set(catalog))


@needs_guidance
def test_catalog_matches_guidance_text(catalog, guidance_text):
    """FR numbers, SP 800-130 sections and sub-item letters are as the guidance gives them."""
    assert compare_with_guidance(catalog, extract_guidance_items(guidance_text)) == []


@needs_guidance
def test_titles_are_not_copied_from_the_guidance(catalog, guidance_text):
    flat = re.sub(r"\s+", "", guidance_text)
    copied = [
        (c.id, t)
        for c in catalog.values()
        for t in (c.title_ja, *(s.title_ja for s in c.subitems.values()))
        if len(t) >= 10 and re.sub(r"\s+", "", t) in flat
    ]
    assert not copied


# ---------------------------------------------------------------------------------------------- helpers


def test_unknown_items_reports_bogus_ids(catalog):
    found = {
        "check:F.06.j.ports_closed",
        "check:A.33.issuance_refused_when_unsynchronised",
        "check:F.58.bogus",  # F chapter ends at F.57
        "check:E.00.bogus",
        "check:F.06.m.bogus",  # F.06 sub-items run a-l
        "check:A.01.x.bogus",  # A.01 has no sub-items
        "test:tests/unit/test_catalog.py::test_unknown_items_reports_bogus_ids",
    }
    assert unknown_items(found, catalog) == ["A.01.x", "E.00", "F.06.m", "F.58"]
    assert "check:F.58.bogus" in unlisted_checks(found, catalog)
    assert "check:F.06.j.ports_closed" not in unlisted_checks(found, catalog)


@pytest.mark.parametrize(
    "bad",
    [
        "F.06.j.ports_closed",
        "check:F.6.x",
        "check:F.06.J.x",
        "check:F.06.j",
        "check:G.01.x",
        "test:foo.py::x",
    ],
)
def test_malformed_check_ids_raise(bad):
    with pytest.raises(ValueError, match="malformed check id"):
        parse_check_id(bad)


def test_parse_check_id():
    assert parse_check_id("check:F.06.j.ports_closed") == cat.CheckRef("F.06", "j", "ports_closed")
    assert parse_check_id("check:A.33.clock_ok") == cat.CheckRef("A.33", None, "clock_ok")
    assert parse_check_id("test:tests/unit/test_x.py::TestY::test_z[p-1]") is None


def test_extract_guidance_items_synthetic():
    text = textwrap.dedent(
        """\
        項目 FR 番号 Framework Requirements の内容 SP 800-130
        F.06 FR8.4 CKMS 設計は以下を明記する：

        a) one
        b) two
        8.2.1 節
        c) three after the page break
        F.07 FR8.5 text
        8.2.1 節
        F.50 FR6.11

        6

        text a) inline is not a sub-item
        a) first
        6.8.6 節
        解説・考慮点
        a) commentary, not a sub-item
        A.27 FR5.1 roles
        5 章
        """
    )
    items = extract_guidance_items(text)
    assert items["F.06"].subitems == ("a", "b", "c")
    assert items["F.06"].sp800_130 == "8.2.1"
    assert items["F.07"].subitems == ()
    assert items["F.50"].fr == "FR6.116"
    assert items["F.50"].subitems == ("a",)
    assert items["A.27"].sp800_130 == "5"
    with pytest.raises(ValueError, match="two requirement rows"):
        extract_guidance_items(text + "F.07 FR8.5 again\n")


# ---------------------------------------------------------------------------------------------- validation errors

GOOD_A01 = {
    "id": "A.01",
    "fr": ["FR4.1"],
    "sp800_130": "4.3",
    "title_ja": "方針の文書化",
    "title_en": "Written policy",
    "summary_en": "A written policy.",
    "applicability": "automated",
    "implemented_by": ["ckms_app:profiles", "role:os_hardening/ssh"],
    "checks": ["check:A.01.policy_present"],
    "status": "planned",
}


def _write(tmp_path: Path, a_items: list[dict], *, e_items=None, f_items=None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for ch, items in (("A", a_items), ("E", e_items or []), ("F", f_items or [])):
        (tmp_path / f"{ch}.yml").write_text(
            yaml.safe_dump({"chapter": ch, "items": items}, allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
    return tmp_path


def _problems(tmp_path, items, **kw) -> str:
    with pytest.raises(CatalogError) as exc:
        load_catalog(_write(tmp_path, items, **kw), require_complete=False)
    return "\n".join(exc.value.problems)


def test_partial_catalog_loads_when_completeness_not_required(tmp_path):
    loaded = load_catalog(_write(tmp_path, [GOOD_A01]), require_complete=False)
    assert list(loaded) == ["A.01"]


def test_missing_items_are_reported(tmp_path):
    with pytest.raises(CatalogError) as exc:
        load_catalog(_write(tmp_path, [GOOD_A01]))
    assert "A.02: missing from the catalog" in exc.value.problems
    assert "F.57: missing from the catalog" in exc.value.problems
    assert len(exc.value.problems) == 162


def test_duplicated_item_is_reported(tmp_path):
    assert "A.01: duplicated (2 entries)" in _problems(tmp_path, [GOOD_A01, GOOD_A01])


def test_item_in_wrong_chapter_or_out_of_range(tmp_path):
    out = _problems(tmp_path, [GOOD_A01], e_items=[{**GOOD_A01}], f_items=[{**GOOD_A01, "id": "F.58"}])
    assert "item of chapter A in the file of chapter E" in out
    assert "F.58 is outside F.01-F.57" in out


def test_automated_without_check(tmp_path):
    item = {k: v for k, v in GOOD_A01.items() if k not in ("checks", "status")}
    assert "automated but lists no check" in _problems(tmp_path, [item])


def test_procedural_without_procedure(tmp_path):
    item = {**GOOD_A01, "applicability": "procedural"}
    assert "procedural but no 'procedure'" in _problems(tmp_path, [item])


def test_not_applicable_without_reason(tmp_path):
    item = {**GOOD_A01, "applicability": "not-applicable"}
    assert "not-applicable but no 'reason'" in _problems(tmp_path, [item])


def test_malformed_procedure_reference(tmp_path):
    item = {**GOOD_A01, "applicability": "procedural", "procedure": "operations#key-ceremony"}
    assert "malformed procedure" in _problems(tmp_path, [item])


@pytest.mark.parametrize(
    "ref", ["role:nonexistent", "ckms_app:", "issuance", "role:os_hardening/SSH", "doc:README.md"]
)
def test_malformed_implementation_reference(tmp_path, ref):
    assert "malformed implemented_by reference" in _problems(
        tmp_path, [{**GOOD_A01, "implemented_by": [ref]}]
    )


def test_malformed_check_in_catalog(tmp_path):
    assert "malformed check id" in _problems(tmp_path, [{**GOOD_A01, "checks": ["A.01.policy"]}])


def test_check_naming_another_or_unknown_item(tmp_path):
    out = _problems(tmp_path, [{**GOOD_A01, "checks": ["check:A.02.other", "check:F.99.unknown"]}])
    assert "check 'check:A.02.other' does not name this entry" in out
    assert "check 'check:F.99.unknown' does not name this entry" in out


def test_sub_item_rules(tmp_path):
    item = {
        **GOOD_A01,
        "subitems": {
            "a": {"title_ja": "一", "title_en": "one", "applicability": "automated"},
            "c": {
                "title_ja": "三",
                "title_en": "three",
                "applicability": "not-applicable",
                "checks": ["check:A.01.policy_present"],
            },
        },
    }
    out = _problems(tmp_path, [item])
    assert "A.01 a): automated but lists no check" in out
    assert "A.01 c): not-applicable but no 'reason'" in out
    assert "does not name this entry (expected check:A.01.c.<slug>)" in out
    assert "not a contiguous run" in out


def test_schema_errors_are_explicit(tmp_path):
    item = {
        **GOOD_A01,
        "fr": ["4.1"],
        "sp800_130": 10.1,
        "title_ja": "policy",
        "colour": "red",
        "status": "done",
    }
    del item["summary_en"]
    out = _problems(tmp_path, [item])
    for expected in (
        "malformed FR number '4.1'",
        "sp800_130 must be a quoted string",
        "title_ja is not Japanese",
        "unknown key 'colour'",
        "missing 'summary_en'",
        "status 'done' is not one of planned, implemented",
    ):
        assert expected in out


def test_checks_without_status(tmp_path):
    item = {k: v for k, v in GOOD_A01.items() if k != "status"}
    assert "lists checks but no 'status'" in _problems(tmp_path, [item])


def test_duplicate_yaml_keys_rejected(tmp_path):
    _write(tmp_path, [GOOD_A01])
    (tmp_path / "A.yml").write_text(
        (tmp_path / "A.yml").read_text(encoding="utf-8") + "  title_en: again\n", encoding="utf-8"
    )
    with pytest.raises(CatalogError, match="duplicate key 'title_en'"):
        load_catalog(tmp_path, require_complete=False)


def test_cli_counts_and_markdown(capsys):
    assert cat.main([]) == 0
    out = capsys.readouterr().out
    assert "total 69" in out and "total 37" in out and "total 57" in out
    assert cat.main(["--markdown"]) == 0
    assert capsys.readouterr().out.startswith("# Guidance items")


# ------------------------------------------------------------------------------ suite tests (tests:)


def test_suite_tests_are_listed_apart_from_checks(tmp_path):
    ref = "test:tests/unit/test_x.py::test_y"
    loaded = load_catalog(_write(tmp_path, [{**GOOD_A01, "tests": [ref]}]), require_complete=False)
    assert loaded["A.01"].tests == (ref,) and loaded["A.01"].all_tests() == (ref,)
    assert ref not in loaded["A.01"].all_checks()


def test_suite_test_under_checks_is_refused(tmp_path):
    item = {**GOOD_A01, "checks": ["check:A.01.policy_present", "test:tests/unit/test_x.py::test_y"]}
    assert "is a suite test: list it under 'tests'" in _problems(tmp_path, [item])


def test_only_suite_tests_do_not_make_an_item_automated(tmp_path):
    item = {
        **{k: v for k, v in GOOD_A01.items() if k != "checks"},
        "tests": ["test:tests/unit/test_x.py::test_y"],
    }
    assert "automated but lists no check" in _problems(tmp_path, [item])


def test_malformed_suite_test_reference(tmp_path):
    item = {**GOOD_A01, "tests": ["tests/unit/test_x.py::test_y"]}
    assert "malformed test reference" in _problems(tmp_path, [item])


def test_real_catalog_keeps_suite_tests_out_of_checks(catalog):
    for c in catalog.values():
        assert not [x for x in c.all_checks() if x.startswith("test:")], c.id
    assert any(c.all_tests() for c in catalog.values())
