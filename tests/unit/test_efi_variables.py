"""Every reader of the SecureBoot EFI variable names it by the EFI global-variable GUID (UEFI spec
§3.3, EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c). A wrong GUID reads a file that never
exists, so the secure boot check could only ever fail on real servers; the VM CA host showed it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def test_secure_boot_variable_uses_the_efi_global_guid() -> None:
    found = {}
    for folder in ("hardening", "roles", "ckms_lab", "ckms_app", "tests/lab"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".py", ".yml", ".yaml", ".sh", ".j2"} and path.is_file():
                for guid in re.findall(r"SecureBoot-([0-9a-f-]{36})", path.read_text(errors="replace")):
                    found[f"{path.relative_to(REPO)}"] = guid
    assert len(found) >= 3, found  # the role's record, the F.07 and E.32 checks (and the VM driver)
    wrong = {where: guid for where, guid in found.items() if guid != EFI_GLOBAL_VARIABLE}
    assert not wrong, wrong
