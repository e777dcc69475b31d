"""The coverage check: a check the catalog names must exist, and so must every document and tool it cites.

Removing one check function from a check module, or citing a document that does not exist, must show as
a gap naming the item and fail the report for that chapter (issue 13).
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from hardening import coverage, report
from hardening.catalog import CATALOG_DIR, load_catalog
from hardening.coverage import coverage_gaps, implemented_checks, load_implementations, markdown_anchors

REPO = Path(__file__).resolve().parents[2]


def _without_function(module: Path, check_id: str) -> str:
    """The module's source with the test function that carries ``check_id`` removed."""
    source = module.read_text()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            check_id in (ast.get_source_segment(source, d) or "") for d in node.decorator_list
        ):
            start = min(d.lineno for d in node.decorator_list) - 1
            return "".join(lines[:start] + lines[node.end_lineno :])
    raise AssertionError(f"{check_id} not defined by a function in {module}")


def test_every_named_check_of_the_catalog_resolves_or_is_reported() -> None:
    catalog = load_catalog()
    found = implemented_checks()
    gaps = {g.detail.split()[0] for g in coverage_gaps(catalog) if g.kind == "missing-check"}
    named = {cid for c in catalog.values() for cid in c.all_checks()}
    assert named - set(found) == gaps


@pytest.mark.parametrize(
    "check_id",
    sorted(
        cid
        for cid, where in implemented_checks().items()
        if where.startswith("hardening/checks/")
        and cid not in implemented_checks(checks_dir=REPO / "no-such-dir")  # not also run by a drill
        and any(cid in c.all_checks() for c in load_catalog().values())
    )[::20],
    # every 20th defined check: each removal is a real edit of a copied module
)
def test_removing_a_check_function_is_a_gap_that_fails_the_report(
    check_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = load_catalog()
    checks = tmp_path / "checks"
    shutil.copytree(REPO / "hardening" / "checks", checks)
    module = checks / Path(implemented_checks()[check_id]).name
    module.write_text(_without_function(module, check_id))
    assert check_id not in implemented_checks(checks)
    monkeypatch.setattr(coverage, "CHECKS_DIR", checks)
    gaps = [g for g in coverage_gaps(catalog) if check_id in g.detail]
    assert gaps and gaps[0].kind == "missing-check" and gaps[0].item.startswith(check_id[6:10])
    chapter = check_id[6]
    rc = report.main(["--out", str(tmp_path / "out"), "--require", chapter])
    assert rc == 1 and f"coverage gap: {gaps[0]}" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(check_id in g["detail"] for g in doc["coverage_gaps"])


def test_citing_a_missing_document_is_a_gap_that_fails_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, cat)
    text = (cat / "F.yml").read_text()
    assert "procedure: docs/operations.md#physical-security" in text
    (cat / "F.yml").write_text(
        text.replace(
            "procedure: docs/operations.md#physical-security",
            "procedure: docs/operations.md#no-such-section",
            1,
        )
    )
    gaps = coverage_gaps(load_catalog(cat))
    assert any(g.kind == "missing-reference" and "#no-such-section" in g.detail for g in gaps)
    rc = report.main(["--out", str(tmp_path / "out"), "--catalog", str(cat), "--require", "F"])
    assert rc == 1 and "coverage gap: F.01: missing-reference" in capsys.readouterr().out
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "no-such-section" in md


def test_references_resolve_by_kind(tmp_path: Path) -> None:
    impl = load_implementations()
    assert coverage.resolve_reference("role:ckms_ca/install", impl) is None
    assert "does not exist" in (coverage.resolve_reference("role:ckms_ca/nothing", impl) or "")
    assert coverage.resolve_reference("ckms_app:crl", impl) is None
    assert "not listed" in (coverage.resolve_reference("ckms_app:teleport", impl) or "")
    assert coverage.resolve_reference("docs/operations.md#key-ceremony", impl) is None
    assert "no section" in (coverage.resolve_reference("doc:docs/operations.md#nowhere", impl) or "")
    assert (
        coverage.resolve_reference("test:tests/unit/test_coverage.py::test_references_resolve_by_kind", impl)
        is None
    )
    assert "defines no" in (
        coverage.resolve_reference("test:tests/unit/test_coverage.py::test_gone", impl) or ""
    )


def test_markdown_anchors_follow_github_slugs(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "# Key ceremony\n## HSM backup & restore\n### `ckms ca init` (first start)\n<a id='custom'></a>\n"
    )
    assert {"key-ceremony", "hsm-backup--restore", "ckms-ca-init-first-start", "custom"} <= markdown_anchors(
        md
    )


def test_every_check_mark_sits_on_a_test_function() -> None:
    """A ``@pytest.mark.check`` on a helper is never collected: its item would show as not executed only on
    a lab (F.16). Every function that carries the mark in hardening/checks is a ``test_`` function."""
    misplaced = []
    for module in sorted((REPO / "hardening" / "checks").glob("*.py")):
        source = module.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("test_"):
                marks = [ast.get_source_segment(source, d) or "" for d in node.decorator_list]
                if any("mark.check" in m for m in marks):
                    misplaced.append(f"{module.name}:{node.lineno} {node.name}")
    assert not misplaced, f"check marks on functions pytest does not collect: {misplaced}"
