"""The breakage catalog (hardening/breakage/breaks.yml) covers every automated A/E item, names only that
item's own checks, restores what it breaks, and the runner's selection and verdict helpers behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardening.breakage.catalog import (
    BREAKS_FILE,
    BreaksError,
    automated_ae_items,
    load_breaks,
    uncovered_items,
)
from hardening.breakage.run import check_modules, names_item
from hardening.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def breaks(catalog):
    return load_breaks(BREAKS_FILE, catalog)


def test_every_automated_a_and_e_item_has_a_break(catalog, breaks):
    items = automated_ae_items(catalog)
    assert len(items) >= 40  # chapters A and E: 50 automated items when this was written
    assert uncovered_items(breaks, catalog) == []


def test_each_break_names_only_checks_of_its_own_item(catalog, breaks):
    for b in breaks.breaks:
        own = set(catalog[b.item].all_checks())
        assert b.fails, f"{b.id}: names no check that must fail"
        assert set(b.fails) <= own, f"{b.id}: {sorted(set(b.fails) - own)} are not checks of {b.item}"


def test_every_break_has_a_restore_and_a_host(breaks):
    for b in breaks.breaks:
        assert b.restore_cmd.strip(), f"{b.id}: no restore commands"
        assert b.break_cmd.strip(), f"{b.id}: no break commands"
        assert b.host in {"ca1", "router", "terminal", "admin", "controller"}, f"{b.id}: host {b.host}"


def test_checks_that_must_fail_exist_as_host_checks(breaks):
    modules = check_modules()
    missing = {b.id: [c for c in b.fails if c not in modules] for b in breaks.breaks}
    assert not {k: v for k, v in missing.items() if v}, missing


def test_controls_are_checks_of_other_items_that_exist(catalog, breaks):
    modules = check_modules()
    assert 2 <= len(breaks.controls) <= 4
    assert all(c in modules for c in breaks.controls)
    # every break keeps at least two controls of other items (a control of its own item is skipped)
    for b in breaks.breaks:
        others = [c for c in breaks.controls if not c.startswith(f"check:{b.item}.")]
        assert len(others) >= 2, f"{b.id}: fewer than two control checks of other items"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "breaks.yml"
    path.write_text(text)
    return path


def test_a_check_of_another_item_is_refused(tmp_path, catalog):
    path = _write(
        tmp_path,
        """
breaks:
  - id: wrong-item
    item: A.05
    host: ca1
    what: x
    break: "true"
    restore: "true"
    fails: [check:A.02.issue_requires_operator_role]
""",
    )
    with pytest.raises(BreaksError, match="not a check of A.05"):
        load_breaks(path, catalog)


def test_a_break_without_restore_is_refused(tmp_path, catalog):
    path = _write(
        tmp_path,
        """
breaks:
  - id: no-restore
    item: A.05
    host: ca1
    what: x
    break: "true"
    fails: [check:A.05.policy_oid_in_issued_certs]
""",
    )
    with pytest.raises(BreaksError, match=r"missing or empty \['restore'\]"):
        load_breaks(path, catalog)


def test_an_f_item_or_unknown_key_is_refused(tmp_path, catalog):
    path = _write(
        tmp_path,
        """
breaks:
  - id: f-item
    item: F.06
    host: ca1
    what: x
    break: "true"
    restore: "true"
    fails: [check:F.06.j.ports_closed]
    when: always
""",
    )
    with pytest.raises(BreaksError) as err:
        load_breaks(path, catalog)
    text = str(err.value)
    assert "unknown keys ['when']" in text and "F.06 is not an A/E item" in text


@pytest.mark.parametrize(
    ("message", "item", "expected"),
    [
        ("AssertionError: A.05: issued certificate policies", "A.05", True),
        ("E.05 e: audit.read is given to ['operator']", "E.05", True),
        ("Failed: E.23: ckms_ca_custodians is not set", "E.23", True),
        ("AssertionError: assert False", "A.43", False),
        ("AssertionError: A.50: something", "A.05", False),
        (None, "A.05", False),
    ],
)
def test_failure_message_must_begin_with_the_item(message, item, expected):
    assert names_item(message, item) is expected
