"""The corrections applied to the ComplianceAsCode content before the public baseline is evaluated
(hardening/openscap_content_patches.yml, scripts/patch-openscap-content.py): each changes exactly its
object's pattern, the corrected pattern no longer reads Defaults lines as user specifications but still
finds a real user specification without a run-as list, and a patch that no longer fits stops the build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "patch-openscap-content.py"
PATCHES = yaml.safe_load((REPO / "hardening" / "openscap_content_patches.yml").read_text())["patches"]

OBJECT = """<ind:textfilecontent54_object id="{oid}" version="1">
  <ind:filepath operation="pattern match">^/etc/sudoers(\\.d/.*)?$</ind:filepath>
  <ind:pattern operation="pattern match">{pattern}</ind:pattern>
  <ind:instance datatype="int">1</ind:instance>
</ind:textfilecontent54_object>"""


def _content(pattern: str) -> str:
    p = PATCHES[0]
    other = OBJECT.format(oid="oval:ssg-other:obj:1", pattern=p["find"])  # same text elsewhere: untouched
    return f"<ds>\n{other}\n{OBJECT.format(oid=p['object'], pattern=pattern)}\n</ds>\n"


def _run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ds.xml").write_text(text)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "ds.xml"), str(tmp_path / "out.xml")],
        capture_output=True,
        text=True,
    )


def test_each_patch_changes_only_its_object(tmp_path):
    p = PATCHES[0]
    proc = _run(tmp_path, _content(p["find"]))
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out.xml").read_text()
    assert out == _content(p["replace"])
    assert (tmp_path / "PATCHES").read_text().split() == [x["id"] for x in PATCHES]


def test_a_patch_that_no_longer_fits_stops(tmp_path):
    p = PATCHES[0]
    proc = _run(tmp_path, _content(p["find"].replace("\\s*", "\\s+", 1)))  # a new release's wording
    assert proc.returncode != 0
    assert p["id"] in proc.stderr + proc.stdout
    assert not (tmp_path / "out.xml").exists()


@pytest.mark.parametrize(
    ("line", "user_spec_without_runas"),
    [
        ("Defaults umask=0077", False),
        ('  Defaults  logfile="/var/log/sudo.log"', False),
        ("alice ALL = /usr/bin/id", True),
        ("alice ALL = (bob) /usr/bin/id", False),
    ],
)
def test_the_corrected_sudoers_pattern(line, user_spec_without_runas):
    patch = next(p for p in PATCHES if p["object"] == "oval:ssg-object_no_runas_spec:obj:1")
    # OVAL patterns are Perl-compatible; these constructs mean the same in Python's re
    assert bool(re.search(patch["replace"], line, re.M)) is user_spec_without_runas
    if line.lstrip().startswith("Defaults"):
        assert re.search(patch["find"], line, re.M), "the defect the patch corrects"
