"""Pure helpers of the lab custody checks (hardening/checks/test_custody.py, ckms_custody.py): they must
find a secret where it is, search the whole file system except the pseudo file systems, and keep the
secret off every command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "hardening" / "checks"
sys.path.insert(0, str(CHECKS))

import ckms_custody  # noqa: E402


def test_occurrences_names_the_texts_holding_the_secret() -> None:
    texts = {"hosts.yml": "a: 1", "vault.yml (decrypted)": "vault_x: s3cret-pin-value", "other": ""}
    assert ckms_custody.occurrences(texts, "s3cret-pin-value") == ["vault.yml (decrypted)"]
    assert ckms_custody.occurrences(texts, "absent") == []
    assert ckms_custody.occurrences(texts, "") == []  # an empty needle matches nothing, not everything


def test_file_search_excludes_pseudo_file_systems_and_reads_the_secret_on_stdin() -> None:
    command = ckms_custody.search_files("/dev/shm/ckms-check-x")
    assert "grep -vxE 'proc|sys|dev|run'" in command and "grep -vx user" in command
    assert "-f /dev/stdin" in command and "< /dev/shm/ckms-check-x" in command


def test_file_search_finds_the_secret(tmp_path: Path) -> None:
    """The grep part of the search, run here on two directories: it names the file holding the secret."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_text("x: s3cret-pin-value\n")
    (tmp_path / "b" / "g").write_text("nothing\n")
    pattern = tmp_path / "pattern"
    pattern.write_text("s3cret-pin-value\n")
    grep = ckms_custody.search_files(str(pattern)).split("| xargs -0 -r ", 1)[1].removesuffix("; true")
    found = subprocess.run(
        f"printf '%s\\0' {tmp_path}/a {tmp_path}/b | xargs -0 -r {grep}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert found.stdout.split() == [str(tmp_path / "a" / "f")]


@pytest.mark.parametrize("name", ["custodian-1", "custodian-2"])
def test_custodian_paths_follow_the_contract(name: str) -> None:
    c = {"name": name, "dest": f"/cache/ansible/lab/custodians/{name}"}
    assert ckms_custody.share_path(c) == Path(f"/cache/ansible/lab/custodians/{name}/{name}.share")
    assert ckms_custody.passphrase_path(c) == Path(f"/cache/ansible/lab/custodians/{name}/passphrase")
