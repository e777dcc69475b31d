#!/usr/bin/env python3
"""Apply hardening/openscap_content_patches.yml to a SCAP datastream (see that file for why).

Usage: patch-openscap-content.py PRISTINE_DS PATCHED_DS
Each patch must find its text exactly once inside the OVAL object it names; otherwise nothing is written
and the exit status is 1 (the content changed: review the patch). Writes PATCHED_DS and, beside it, PATCHES
(one patch id per line) for the evaluation's record.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "hardening" / "openscap_content_patches.yml"


def apply(text: str, patch: dict[str, str]) -> str:
    obj = re.search(
        r'<ind:textfilecontent54_object id="'
        + re.escape(patch["object"])
        + r'".*?</ind:textfilecontent54_object>',
        text,
        re.S,
    )
    if obj is None:
        raise SystemExit(f"patch {patch['id']}: object {patch['object']} not in the content")
    find, replace = html.escape(patch["find"], quote=False), html.escape(patch["replace"], quote=False)
    body = obj.group(0)
    if body.count(find) != 1:
        raise SystemExit(
            f"patch {patch['id']}: its text occurs {body.count(find)} times in {patch['object']}"
        )
    return text[: obj.start()] + body.replace(find, replace) + text[obj.end() :]


def main(argv: list[str]) -> int:
    pristine, patched = Path(argv[1]), Path(argv[2])
    patches = (yaml.safe_load(PATCHES.read_text()) or {}).get("patches") or []
    text = pristine.read_text()
    for p in patches:
        text = apply(text, p)
    tmp = patched.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(patched)
    (patched.parent / "PATCHES").write_text("".join(f"{p['id']}\n" for p in patches))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
