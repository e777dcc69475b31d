"""A CA key the user PIN cannot hurt, and SO actions that need two custodians (E.11, E.22, E.23).

Real SoftHSM2 token: with only the daemon's user PIN the CA key can be neither destroyed nor
altered; ``destroy-key`` re-initialises the token with the custody SO PIN and keeps every other key;
``change-so-pin`` and ``custody reshare`` put a new SO PIN on the token and hand out a new share set,
after which the old shares no longer open the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CaHome, ckms, init_home

CUSTODIANS = ("alice", "bob", "carol")

Creds = dict[str, tuple[Path, Path]]


def _passphrase(dir_: Path, name: str, text: str) -> Path:
    pp = dir_ / name
    pp.write_text(text + "\n")
    pp.chmod(0o600)
    return pp


@pytest.fixture(scope="module")
def custody_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaHome, Creds, Path]:
    root = tmp_path_factory.mktemp("custody-admin")
    home = init_home(root / "home")
    pp_dir = root / "passphrases"
    pp_dir.mkdir(mode=0o700)
    args = []
    for name in CUSTODIANS:
        args += [
            "--custodian",
            name,
            "--passphrase-file",
            str(_passphrase(pp_dir, name, f"pass phrase {name} 1")),
        ]
    ckms("hsm", "custody", "split", "--home", str(home.home), "--out-dir", str(root / "shares"), *args)
    creds = {n: (root / "shares" / f"{n}.share", pp_dir / n) for n in CUSTODIANS}
    return home, creds, root


def with_custodians(creds: Creds, *names: str) -> list[str]:
    args = []
    for n in names:
        args += ["--share-file", str(creds[n][0])]
    for n in names:
        args += ["--passphrase-file", str(creds[n][1])]
    return args


USER_PIN_PROBE = r"""
import json, sys
from pathlib import Path
import pkcs11
from pkcs11 import Attribute, ObjectClass
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
cfg = load_config(Path(sys.argv[1]))
label = sys.argv[2]
out = {}
with Token(cfg.token) as token:   # the daemon's user PIN, nothing else
    for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        obj = token._find(cls, label)
        name = cls.name.lower()
        out[name] = {"destroyable": bool(obj[Attribute.DESTROYABLE]), "modifiable": bool(obj[Attribute.MODIFIABLE])}
        for what, attr, value in (("label", Attribute.LABEL, "renamed"), ("sign", Attribute.SIGN, False)):
            if cls == ObjectClass.PUBLIC_KEY and what == "sign":
                attr = Attribute.VERIFY
            try:
                obj[attr] = value
                out[name][what] = "CHANGED"
            except pkcs11.PKCS11Error as exc:
                out[name][what] = type(exc).__name__
        try:
            obj.destroy()
            out[name]["destroy"] = "DESTROYED"
        except pkcs11.PKCS11Error as exc:
            out[name]["destroy"] = type(exc).__name__
    out["still_signs"] = token.load_ec_key(label).label == label
    out["labels"] = sorted(str(o[Attribute.LABEL]) for o in token._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
print(json.dumps(out))
"""


def probe(home: CaHome, label: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", USER_PIN_PROBE, str(home.home), label],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_user_pin_cannot_destroy_or_modify_ca_key(custody_home) -> None:
    home, _, _ = custody_home
    out = probe(home, "ckms-ca-key")
    for half in ("private_key", "public_key"):
        assert out[half]["destroyable"] is False and out[half]["modifiable"] is False, out
        assert out[half]["label"] != "CHANGED" and out[half]["sign"] != "CHANGED", out
        assert out[half]["destroy"] != "DESTROYED", out
    assert out["still_signs"]
    assert ckms("selftest", "--home", str(home.home), check=False).returncode == 0


def test_destroy_key_needs_two_and_keeps_the_others(custody_home) -> None:
    home, creds, _ = custody_home
    ckms(
        "hsm",
        "keygen",
        "--home",
        str(home.home),
        "--label",
        "retired-key",
        *with_custodians(creds, "alice", "bob"),
    )
    assert probe(home, "retired-key")["private_key"]["destroy"] != "DESTROYED"
    before = set(probe(home, "ckms-ca-key")["labels"])
    assert "retired-key" in before

    res = ckms(
        "hsm", "destroy-key", "--yes", "--home", str(home.home), "--label", "retired-key",
        *with_custodians(creds, "carol"), check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr, res.stderr
    denied = [r for r in home.audit("hsm.key.destroy") if r[4] == "denied"]
    assert denied and json.loads(denied[-1][5])["custodians"] == ["carol"] and denied[-1][1] == "custodian"

    # the key the CA signs with is refused without --retire-current, even with two custodians
    res = ckms(
        "hsm", "destroy-key", "--yes", "--home", str(home.home), "--label", "ckms-ca-key",
        *with_custodians(creds, "alice", "carol"), check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "--retire-current" in res.stderr, res.stderr

    out = ckms(
        "hsm", "destroy-key", "--yes", "--home", str(home.home), "--label", "retired-key", "--json",
        *with_custodians(creds, "carol", "alice"),
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["destroyed"] == "retired-key" and result["token_reinitialised"] is True
    assert "ckms-ca-key" in result["kept"] and result["custodians"] == ["alice", "carol"]
    after = probe(home, "ckms-ca-key")
    assert set(after["labels"]) == before - {"retired-key"}
    # the kept CA key is as protected as before and the CA still passes its self-tests (pairwise)
    assert after["private_key"]["destroyable"] is False and after["private_key"]["destroy"] != "DESTROYED"
    assert ckms("selftest", "--home", str(home.home), check=False).returncode == 0
    assert not (home.home / "hsm" / "zeroise-rescue.backup").exists()
    ok = [r for r in home.audit("hsm.key.destroy") if r[4] == "success"]
    assert ok and json.loads(ok[-1][5])["custodians"] == ["alice", "carol"]


def _replace_args(dir_: Path, names: tuple[str, ...], gen: int) -> list[str]:
    args = []
    for name in names:
        args += [
            "--new-passphrase-file",
            str(_passphrase(dir_, f"{name}-{gen}", f"pass phrase {name} {gen}")),
        ]
    return args


def test_change_so_pin_then_reshare(custody_home) -> None:
    home, creds, root = custody_home
    pp_dir = root / "passphrases"
    old_id = json.loads((home.home / "hsm" / "custody.json").read_text())["custody_id"]
    res = ckms(
        "hsm", "change-so-pin", "--home", str(home.home), "--out-dir", str(root / "gen2"),
        *with_custodians(creds, "bob"), *_replace_args(pp_dir, CUSTODIANS, 2), check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "needs 2 of 3" in res.stderr
    assert not (root / "gen2").exists() or not any((root / "gen2").iterdir())
    out = ckms(
        "hsm", "change-so-pin", "--home", str(home.home), "--out-dir", str(root / "gen2"), "--json",
        *with_custodians(creds, "bob", "carol"), *_replace_args(pp_dir, CUSTODIANS, 2),
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["so_pin"] == "changed" and result["custody_id"] != old_id
    assert result["new_custodians"] == list(CUSTODIANS)
    gen2 = {n: (root / "gen2" / f"{n}.share", pp_dir / f"{n}-2") for n in CUSTODIANS}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p, _ in gen2.values())
    # old shares are refused; new ones open the token
    old = ckms(
        "hsm", "custody-check", "--home", str(home.home), *with_custodians(creds, "alice", "bob"), check=False
    )
    assert old.returncode == 1 and "another custody set" in old.stderr
    ckms("hsm", "custody-check", "--home", str(home.home), *with_custodians(gen2, "alice", "carol"))
    assert [r for r in home.audit("hsm.so_pin.change") if r[4] == "success"]

    # reshare to a new custodian set: dave replaces carol
    new_names = ("alice", "bob", "dave")
    out = ckms(
        "hsm", "custody", "reshare", "--home", str(home.home), "--out-dir", str(root / "gen3"), "--json",
        *[a for n in new_names for a in ("--custodian", n)],
        *with_custodians(gen2, "carol", "alice"), *_replace_args(pp_dir, new_names, 3),
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["old_custodians"] == list(CUSTODIANS) and result["new_custodians"] == list(new_names)
    record = json.loads((home.home / "hsm" / "custody.json").read_text())
    assert record["custodians"] == list(new_names) and record["custody_id"] == result["custody_id"]
    gen3 = {n: (root / "gen3" / f"{n}.share", pp_dir / f"{n}-3") for n in new_names}
    ckms("hsm", "custody-check", "--home", str(home.home), *with_custodians(gen3, "dave", "bob"))
    stale = ckms(
        "hsm", "custody-check", "--home", str(home.home), *with_custodians(gen2, "alice", "bob"), check=False
    )
    assert stale.returncode == 1
    audited = [r for r in home.audit("hsm.custody.reshare") if r[4] == "success"]
    detail = json.loads(audited[-1][5])
    assert detail["custodians"] == ["alice", "carol"]  # who authorised it
    assert detail["old_custodians"] == list(CUSTODIANS) and detail["new_custodians"] == list(new_names)
    # the daemon's user PIN still works and the CA key is intact
    assert ckms("selftest", "--home", str(home.home), check=False).returncode == 0
