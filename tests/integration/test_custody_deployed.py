"""Custody as deployed (E.22, E.23, F.54): the token is initialised by hsm_client's helper, not by ``ca init``.

``ckms-pkcs11-token init`` draws the SO PIN on the host and leaves it only in ``secrets/token-so-pin``
(0600); ``ca init --pin-file`` uses the existing token; ``ckms hsm custody split`` consumes the file. A
spare home restored from a routine backup (no token store) gets its key back from a custody-wrapped
backup into a fresh token named by ``SOFTHSM2_CONF`` and ``--token-dir``, and passes its self-tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ckms, free_port

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "roles" / "hsm_client" / "files" / "ckms-pkcs11-token"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CUSTODIANS = ("custodian-1", "custodian-2", "custodian-3")


def softhsm_conf(home: Path) -> Path:
    conf = home / "hsm" / "softhsm2.conf"
    (home / "hsm" / "tokens").mkdir(parents=True, mode=0o700, exist_ok=True)
    conf.write_text(
        f"directories.tokendir = {home}/hsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    return conf


def helper(conf: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HELPER), *args, "--module", MODULE, "--label", "ckms-ca"],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        timeout=60,
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("deployed")
    home = root / "home"
    (home / "secrets").mkdir(parents=True, mode=0o700)
    conf = softhsm_conf(home)
    env = {"SOFTHSM2_CONF": str(conf)}
    user_pin = "deployed-user-pin-0123456789"
    pin_file = home / "secrets" / "token-pin"
    pin_file.write_text(user_pin + "\n")
    pin_file.chmod(0o600)
    so_file = home / "secrets" / "token-so-pin"
    init = helper(conf, "init", "--so-pin-file", str(so_file), stdin=json.dumps({"user_pin": user_pin}))
    assert init.returncode == 0 and json.loads(init.stdout)["changed"], init.stderr
    so_pin = so_file.read_text().strip()
    again = helper(conf, "init", "--so-pin-file", str(so_file), stdin=json.dumps({"user_pin": user_pin}))
    assert json.loads(again.stdout)["changed"] is False
    ckms(
        "ca", "init", "--home", str(home), "--json", "--est-port", str(free_port()),
        "--crl-port", str(free_port()), "--pkcs11-module", MODULE, "--token-label", "ckms-ca",
        "--pin-file", str(pin_file), env=env,
    )  # fmt: skip
    pp_dir = root / "custodians"
    pp_dir.mkdir(mode=0o700)
    args = []
    for name in CUSTODIANS:
        pp = pp_dir / f"{name}.passphrase"
        pp.write_text(f"passphrase of {name} 42\n")
        pp.chmod(0o600)
        args += ["--custodian", name, "--passphrase-file", str(pp)]
    out = ckms(
        "hsm", "custody", "split", "--home", str(home), "--out-dir", str(pp_dir), "--json", *args, env=env
    )
    return {
        "root": root, "home": home, "env": env, "so_pin": so_pin, "split": json.loads(out.stdout),
        "creds": {n: (pp_dir / f"{n}.share", pp_dir / f"{n}.passphrase") for n in CUSTODIANS},
    }  # fmt: skip


def test_so_pin_drawn_on_host_and_consumed_by_the_ceremony(deployed) -> None:
    assert len(deployed["so_pin"]) >= 24
    assert deployed["split"]["so_pin_file"] == "destroyed"
    assert not (deployed["home"] / "secrets" / "token-so-pin").exists()
    # the helper refuses to initialise without a place for the SO PIN (it never takes one as input)
    fresh = deployed["root"] / "fresh"
    (fresh / "secrets").mkdir(parents=True)
    res = helper(softhsm_conf(fresh), "init", stdin=json.dumps({"user_pin": "x" * 20}))
    assert res.returncode != 0 and "--so-pin-file" in res.stderr
    # nothing under the home holds the SO PIN any more
    for path in deployed["home"].rglob("*"):
        if path.is_file() and "tokens" not in path.parts:
            assert deployed["so_pin"].encode() not in path.read_bytes(), path


def test_spare_home_gets_its_key_from_a_wrapped_backup(deployed, tmp_path: Path) -> None:
    home, env, creds = deployed["home"], deployed["env"], deployed["creds"]
    wrapped = tmp_path / "ca-key.backup"
    two = ["--share-file", str(creds["custodian-1"][0]), "--share-file", str(creds["custodian-3"][0])]
    two += [
        "--passphrase-file",
        str(creds["custodian-1"][1]),
        "--passphrase-file",
        str(creds["custodian-3"][1]),
    ]
    ckms("hsm", "backup", "--home", str(home), "--out", str(wrapped), *two, env=env)
    # a routine backup's content: the home without its token store and PIN files
    spare = tmp_path / "spare"
    shutil.copytree(home, spare, ignore=shutil.ignore_patterns("tokens*", "secrets"))
    assert not (spare / "hsm" / "tokens").exists()
    spare_conf = spare / "hsm" / "softhsm2.conf"
    # the spare's own (empty) token directory, as the F.54 check stages it
    spare_conf.write_text(spare_conf.read_text().replace(f"{home}/hsm/tokens", f"{spare}/hsm/tokens"))
    spare_env = {"SOFTHSM2_CONF": str(spare_conf)}
    lost = ckms("selftest", "--home", str(spare), check=False, env=spare_env)
    assert lost.returncode != 0
    one = ckms(
        "hsm", "restore", "--home", str(spare), "--in", str(wrapped), "--token-dir", str(spare / "hsm" / "tokens"),
        *two[:2], *two[4:6], check=False, env=spare_env,
    )  # fmt: skip
    assert one.returncode == 1 and "needs 2 of 3" in one.stderr
    out = ckms(
        "hsm", "restore", "--home", str(spare), "--in", str(wrapped), "--token-dir", str(spare / "hsm" / "tokens"),
        "--json", *two, env=spare_env,
    )  # fmt: skip
    assert json.loads(out.stdout)["pairwise_test"] == "passed"
    assert str(spare / "hsm" / "tokens") in spare_conf.read_text()
    ckms("ca", "recover", "--home", str(spare), env=spare_env)
    assert ckms("selftest", "--home", str(spare), check=False, env=spare_env).returncode == 0
    # the live CA's token is untouched
    assert ckms("selftest", "--home", str(home), check=False, env=env).returncode == 0
