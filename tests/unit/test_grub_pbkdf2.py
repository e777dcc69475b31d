"""scripts/grub-pbkdf2.py makes the GRUB superuser's password hash exactly as grub-mkpasswd-pbkdf2 does (the lab's
vault_os_hardening_bootloader_password_hash; os_hardening's bootloader concern checks its format).

A known answer of the real tool, the same computation done here with hashlib independently, the format (64-byte salt
and hash, upper-case hex, 10000 iterations) against the role's own check, and the password file (0600, kept).
Pure computation and files in tmp_path."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import stat
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FORMAT = re.compile(r"^grub\.pbkdf2\.sha512\.10000\.[0-9A-F]{128}\.[0-9A-F]{128}$")

# printf 'ckms-known-answer\nckms-known-answer\n' | grub-mkpasswd-pbkdf2   (grub-common 2.06-13+deb12u2)
KNOWN_PASSWORD = "ckms-known-answer"
KNOWN_HASH = (
    "grub.pbkdf2.sha512.10000."
    "791F4B44FA60546E88EBA85F1763DFF2BCE4D88DC9006C9DE658DF3CF36E2B4C"
    "C8DF785D0FA43AFACBA1B8574CC77AA46C14FD144FCE882DC0D46F9BE4BCB7F8."
    "233C40DD104AA96ABBC4725DA7A4B265D3293E8C047156983E1230D6E0D0B068"
    "4C2CE2034B87DD0AC83769CFF387F307088AC36C61CEE62F166542D3D515FECD"
)


def _module():
    spec = importlib.util.spec_from_file_location("grub_pbkdf2", REPO / "scripts" / "grub-pbkdf2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_known_answer_of_grub_mkpasswd_pbkdf2():
    g = _module()
    salt = bytes.fromhex(KNOWN_HASH.split(".")[4])
    assert g.grub_pbkdf2(KNOWN_PASSWORD, salt) == KNOWN_HASH
    assert g.verify(KNOWN_PASSWORD, KNOWN_HASH)
    assert not g.verify(KNOWN_PASSWORD + "x", KNOWN_HASH)


def test_same_as_hashlib_computed_here():
    g = _module()
    password, salt = "Zq8-random password ü", bytes(range(64))
    expected = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, 10000, dklen=64)
    assert (
        g.grub_pbkdf2(password, salt)
        == f"grub.pbkdf2.sha512.10000.{salt.hex().upper()}.{expected.hex().upper()}"
    )


def test_format_and_fresh_salt():
    g = _module()
    first, second = g.grub_pbkdf2("same password"), g.grub_pbkdf2("same password")
    assert FORMAT.match(first) and FORMAT.match(second)
    assert first != second  # a new 64-byte salt each time
    assert g.verify("same password", first) and g.verify("same password", second)


def test_the_role_accepts_the_format():
    """The regex of os_hardening's assert on os_hardening_bootloader_password_hash matches what the script makes
    and refuses what is not a hash."""
    tasks = yaml.safe_load((REPO / "roles/os_hardening/tasks/bootloader.yml").read_text())
    that = next(t["ansible.builtin.assert"]["that"] for t in tasks if "password hash" in t["name"])
    pattern = next(
        re.search(r"is regex\('(.*)'\)", c).group(1) for c in that if "password_hash is regex" in c
    )
    role = re.compile(pattern)
    g = _module()
    assert role.match(g.grub_pbkdf2("x")) and role.match(KNOWN_HASH)
    for wrong in ("", "secret", "grub.pbkdf2.sha512.10000.ABC.DEF", KNOWN_HASH + " ", "$6$salt$hash"):
        assert not role.match(wrong), wrong


def test_new_password_file_is_private_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    g = _module()
    path = tmp_path / "bootloader-password"
    assert g.main(["--new-password", str(path)]) == 0
    first = capsys.readouterr().out.strip()
    password = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(password) >= 24 and FORMAT.match(first) and g.verify(password, first)
    assert g.main(["--new-password", str(path)]) == 0  # kept: the same password, a new salt
    second = capsys.readouterr().out.strip()
    assert path.read_text().strip() == password and second != first and g.verify(password, second)


def test_password_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    g = _module()
    monkeypatch.setattr("sys.stdin", io.StringIO(KNOWN_PASSWORD + "\n"))
    assert g.main([]) == 0
    assert g.verify(KNOWN_PASSWORD, capsys.readouterr().out.strip())
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert g.main([]) == 1
