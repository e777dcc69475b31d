"""Custodians are asked for their passphrase in their own language (``--lang ja``), and a passphrase from a
0600 file is used without a prompt; the prompt never echoes (getpass) and shows only the name and share."""

from __future__ import annotations

import secrets
from pathlib import Path

from ckms_app.hsm import custody
from ckms_app.i18n import translator


def _shares(tmp_path: Path) -> list[Path]:
    record = custody.new_record(["alice", "bob", "carol"], "ckms-ca")
    secret = custody.CustodySecret("so-pin-1234", secrets.token_bytes(custody.KWK_BYTES))
    paths = []
    for i, sealed in enumerate(custody.split_secret(secret, record, [f"passphrase-of-{n}" for n in "abc"])):
        path = tmp_path / f"share-{i}.json"
        custody.write_share_file(path, sealed)
        paths.append(path)
    return paths


def test_prompt_in_the_persons_language_and_files_need_none(tmp_path):
    alice, bob, _carol = _shares(tmp_path)
    pp_file = tmp_path / "alice.pass"
    pp_file.write_text("passphrase-of-a\n")
    pp_file.chmod(0o600)
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "passphrase-of-b"

    _ = translator("ja")
    creds = custody.gather_credentials(
        [alice, bob],
        [pp_file],
        prompt=prompt,
        prompt_text=_("passphrase of custodian {custodian} (share {index}): "),
    )
    assert [c.sealed.custodian for c in creds] == ["alice", "bob"]
    assert asked == ["カストディアン bob のパスフレーズ（シェア 2）: "]
    assert [c.passphrase for c in creds] == ["passphrase-of-a", "passphrase-of-b"]
