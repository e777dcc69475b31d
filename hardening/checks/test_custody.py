"""HSM custody on the deployed CA (E.11, E.22, E.23): the SO PIN exists only on the token and, split, with
three custodians; SO actions need two of them; the daemon's user PIN cannot destroy or alter the CA key;
routine backups carry no token store.

Runs on the controller (make report), which holds the custodians' directories (``ckms_ca_custodians``), so
the SO PIN can be rebuilt here, in this process, and looked for everywhere it must not be. Everything
that could harm the CA acts on scratch copies (a copied token store, a temporary directory)."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
from ckms_checks import CA_HOME, CA_USER, CA_VENV, REPO, as_ckms, policy
from ckms_custody import (
    available,
    custodians,
    occurrences,
    passphrase_path,
    rebuild_so_pin,
    record,
    search_files,
    secret_on_host,
    share_path,
    staged,
)

from ckms_app.hsm import custody

testinfra_hosts = ["ansible://ca"]

CKMS = f"{CA_VENV}/bin/ckms"
BACKUP_DIR = "/var/backups/ckms"


def _two(host) -> list[dict]:
    have = available(host)
    if len(have) < 2:
        pytest.skip("fewer than two custodians' shares on this controller (custodians hold them offline)")
    return have[:2]


def _audit_latest(host, action: str, outcome: str) -> dict | None:
    code = (
        "import json, sqlite3, sys\n"
        f"c = sqlite3.connect('file:{CA_HOME}/db/ckms.sqlite3?mode=ro', uri=True)\n"
        "r = c.execute('SELECT entity_id, role, outcome, detail FROM audit_events WHERE action=? AND outcome=? "
        "ORDER BY seq DESC LIMIT 1', (sys.argv[1], sys.argv[2])).fetchone()\n"
        "print(json.dumps(r and {'entity': r[0], 'role': r[1], 'outcome': r[2], 'detail': json.loads(r[3])}))\n"
    )
    b64 = base64.b64encode(code.encode()).decode()
    out = as_ckms(host, f'{CA_VENV}/bin/python -c "$(echo {b64} | base64 -d)" {action} {outcome}')
    assert out.rc == 0, f"cannot read the audit trail: {out.stderr[-300:]}"
    return json.loads(out.stdout)


# ------------------------------------------------------------------------------------------- E.22
@pytest.mark.check("check:E.22.so_pin_absent_everywhere")
def test_so_pin_absent_everywhere(host, request, evidence):
    chosen = _two(host)
    so_pin = rebuild_so_pin(host, chosen)
    evidence.add("SO PIN rebuilt on the controller from", [c["name"] for c in chosen])
    assert len(so_pin) >= 24, "E.22: the SO PIN is shorter than 24 characters"
    with secret_on_host(host, so_pin) as pattern:
        files = host.run(search_files(pattern))
        environ = host.run(
            f'for f in /proc/[0-9]*/environ; do grep -qasF -f /dev/stdin "$f" < {pattern} && echo "$f"; done; true'
        )
    # the pattern file itself (in /dev/shm, which is also reachable as /run/shm) is not a finding
    own = Path(pattern).name
    found_files = [line for line in files.stdout.splitlines() if line.strip() and Path(line).name != own]
    found_env = [line for line in environ.stdout.splitlines() if line.strip()]
    evidence.add("files on the CA host holding the SO PIN", found_files or "none")
    evidence.add("process environments on the CA host holding the SO PIN", found_env or "none")
    # the controller: the inventory these checks run against (its directory: group_vars, host_vars, files)
    # and its decrypted vault
    inventory = request.config.getoption("ansible_inventory", None)
    stack = os.environ.get("CKMS_LAB_STACK", "lab")
    gen = Path(inventory).resolve().parent if inventory else REPO / "inventories" / stack / "generated"
    texts = (
        {str(p): p.read_text(errors="replace") for p in gen.rglob("*") if p.is_file()} if gen.is_dir() else {}
    )
    vault = gen / "group_vars" / "ca" / "vault.yml"
    if vault.is_file() and os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE"):
        view = subprocess.run(
            [str(REPO / ".venv" / "bin" / "ansible-vault"), "view", str(vault)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert view.returncode == 0, f"E.22: the vault does not decrypt here: {view.stderr[-200:]}"
        texts["vault.yml (decrypted)"] = view.stdout
    else:
        evidence.limit("the vault could not be decrypted on this controller (no ANSIBLE_VAULT_PASSWORD_FILE)")
    on_controller = occurrences(texts, so_pin)
    evidence.add("controller files searched", len(texts))
    evidence.add("controller files holding the SO PIN", on_controller or "none")
    assert not found_files, f"E.22: the SO PIN is in files on the CA host: {found_files}"
    assert not found_env, f"E.22: the SO PIN is in process environments: {found_env}"
    assert not on_controller, f"E.22: the SO PIN is in the inventory or vault: {on_controller}"
    assert not host.file(f"{CA_HOME}/secrets/token-so-pin").exists, "E.22: the SO PIN file is still there"


@pytest.mark.check("check:E.22.wrapped_backup_needs_two_shares")
def test_wrapped_backup_needs_two_shares(host, evidence):
    chosen = _two(host)
    with staged(host, chosen) as two_args, staged(host, chosen[:1]) as one_args:
        out_dir = two_args[1].rsplit("/", 1)[0]
        one = as_ckms(host, shlex.join([CKMS, "hsm", "backup", "--out", f"{out_dir}/one.backup", *one_args]))
        denied = _audit_latest(host, "hsm.backup", "denied")
        two = as_ckms(
            host, shlex.join([CKMS, "hsm", "backup", "--json", "--out", f"{out_dir}/two.backup", *two_args])
        )
        made = host.file(f"{out_dir}/two.backup")
        made_info = {"exists": made.exists, "mode": oct(made.mode) if made.exists else None}
        one_made = host.file(f"{out_dir}/one.backup").exists
    evidence.add("one custodian", {"rc": one.rc, "stderr": one.stderr.strip()[-300:], "file made": one_made})
    evidence.add("refusal in the audit trail", denied)
    evidence.add("two custodians", {"rc": two.rc, "result": two.stdout.strip()[-400:], "file": made_info})
    assert one.rc != 0 and "needs 2 of 3" in one.stderr and not one_made, "E.22: one custodian made a backup"
    assert denied and denied["detail"].get("custodians") == [chosen[0]["name"]], (
        "E.22: the refused backup is not in the audit trail with its custodian"
    )
    assert two.rc == 0 and made_info["exists"], f"E.22: two custodians cannot back up: {two.stderr[-300:]}"
    assert json.loads(two.stdout)["custodians"] == sorted(c["name"] for c in chosen)


# ------------------------------------------------------------------------------------------- A.28
@pytest.mark.check("check:A.28.key_backup_needs_two_custodians")
def test_key_backup_needs_two_custodians(host, evidence):
    """Administrators run the CA, but the CA key's backup and restore are the custodians' (2 of 3): with
    no share, and with one share, backup and restore are refused, whoever runs them."""
    chosen = _two(host)
    with staged(host, chosen[:1]) as one_args:
        scratch = one_args[1].rsplit("/", 1)[0]
        none = as_ckms(host, shlex.join([CKMS, "hsm", "backup", "--out", f"{scratch}/none.backup"]))
        restore = as_ckms(
            host,
            shlex.join(
                [
                    CKMS,
                    "hsm",
                    "restore",
                    "--in",
                    f"{scratch}/none.backup",
                    "--token-dir",
                    f"{scratch}/t",
                    *one_args,
                ]
            ),
        )
        made = host.file(f"{scratch}/none.backup").exists
    evidence.add("backup with no custodian", {"rc": none.rc, "stderr": none.stderr.strip()[-300:]})
    evidence.add("restore with one custodian", {"rc": restore.rc, "stderr": restore.stderr.strip()[-300:]})
    assert none.rc != 0 and not made, "A.28: a key backup was made without custodians"
    assert restore.rc != 0 and "2 of 3" in restore.stderr, "A.28: a restore ran with one custodian"


# ------------------------------------------------------------------------------------------- E.23
@pytest.mark.check("check:E.23.three_shares_at_custodian_destinations")
def test_three_shares_at_custodian_destinations(host, evidence):
    listed = custodians(host)
    if not listed:
        pytest.fail("E.23: ckms_ca_custodians is not set in the inventory")
    rec = record(host)
    rows = {}
    for c in listed:
        share, dest = share_path(c), Path(c["dest"])
        row: dict = {
            "dest": str(dest),
            "dest_mode": oct(dest.stat().st_mode & 0o777) if dest.is_dir() else None,
        }
        if share.is_file():
            row["share_mode"] = oct(share.stat().st_mode & 0o777)
            row["passphrase_mode"] = (
                oct(passphrase_path(c).stat().st_mode & 0o777) if passphrase_path(c).is_file() else None
            )
            try:
                sealed = custody.read_share_file(share)
                row.update(
                    custodian=sealed.custodian, custody_id=sealed.custody_id, index=sealed.header["index"]
                )
            except custody.CustodyError as exc:
                row["error"] = str(exc)
        rows[c["name"]] = row
    evidence.add("custody set on the CA host", {"id": rec.custody_id, "custodians": list(rec.custodians)})
    evidence.add("custodian destinations", rows)
    assert len(listed) == 3 and len({str(Path(c["dest"]).resolve()) for c in listed}) == 3, (
        "E.23: three custodians with three distinct destinations are needed"
    )
    assert list(rec.custodians) == [c["name"] for c in listed], (
        "E.23: the CA's custody set names other custodians"
    )
    for name, row in rows.items():
        assert row["dest_mode"] == "0o700", f"E.23: {name}'s directory is not 0700"
        assert row.get("share_mode") == "0o600", f"E.23: {name}'s share is missing or not 0600"
        assert row.get("passphrase_mode") in (None, "0o600"), f"E.23: {name}'s passphrase file is not 0600"
        assert "error" not in row and row.get("custodian") == name, (
            f"E.23: {name}'s share does not parse: {row}"
        )
        assert row["custody_id"] == rec.custody_id, f"E.23: {name}'s share belongs to another custody set"
    assert len({row["index"] for row in rows.values()}) == 3, "E.23: two custodians hold the same share"


# ------------------------------------------------------------------------------------------- E.11
USER_PIN_PROBE = r"""
import json, os, sys
from pathlib import Path
from ckms_app.config import load_config
cfg = load_config(Path(sys.argv[1]))
os.environ["SOFTHSM2_CONF"] = sys.argv[2]  # the scratch copy, before the module is loaded
import pkcs11
from pkcs11 import Attribute, ObjectClass
token = pkcs11.lib(cfg.token.module).get_token(token_label=cfg.token.token_label)
out = {"label": cfg.ca_key_label}
query = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: cfg.ca_key_label}
with token.open(user_pin=cfg.token.pin_file.read_text().strip(), rw=True) as s:
    keys = list(s.get_objects(query))
    out["found"] = len(keys)
    if keys:
        k = keys[0]
        out["destroyable"], out["modifiable"] = bool(k[Attribute.DESTROYABLE]), bool(k[Attribute.MODIFIABLE])
        for what, attr, value in (("label", Attribute.LABEL, "renamed-by-check"), ("sign", Attribute.SIGN, False)):
            try:
                k[attr] = value
                out[what] = "CHANGED"
            except pkcs11.PKCS11Error as exc:
                out[what] = type(exc).__name__
        try:
            k.destroy()
            out["destroy"] = "DESTROYED"
        except pkcs11.PKCS11Error as exc:
            out["destroy"] = type(exc).__name__
    out["still_there"] = len(list(s.get_objects(query)))
print(json.dumps(out))
"""


def _tokendir(host) -> str:
    conf = host.file(f"{CA_HOME}/hsm/softhsm2.conf").content_string
    m = re.search(r"^\s*directories\.tokendir\s*=\s*(\S+)", conf, re.M)
    return m.group(1) if m else f"{CA_HOME}/hsm/tokens"


@pytest.mark.check("check:E.11.user_pin_cannot_destroy_or_modify_ca_key")
def test_user_pin_cannot_destroy_or_modify_ca_key(host, evidence):
    if not host.file(f"{CA_HOME}/hsm/softhsm2.conf").exists:
        pytest.skip("vendor HSM: no token store to copy; the attributes are set by the same code")
    scratch = host.run("mktemp -d /var/tmp/ckms-e11-XXXXXX").stdout.strip()
    assert scratch.startswith("/var/tmp/ckms-e11-")
    try:
        conf = f"{scratch}/softhsm2.conf"
        staged_ = host.run(
            f"set -e; cp -a {shlex.quote(_tokendir(host))} {scratch}/tokens; "
            f"printf 'directories.tokendir = %s\\nobjectstore.backend = file\\nlog.level = ERROR\\n' {scratch}/tokens "
            f"> {conf}; chown -R {CA_USER}: {scratch}; chmod 700 {scratch}"
        )
        assert staged_.rc == 0, f"cannot copy the token store: {staged_.stderr[-300:]}"
        b64 = base64.b64encode(USER_PIN_PROBE.encode()).decode()
        out = as_ckms(host, f'cd / && {CA_VENV}/bin/python -c "$(echo {b64} | base64 -d)" {CA_HOME} {conf}')
    finally:
        host.run(f"rm -rf {shlex.quote(scratch)}")
    evidence.add("scratch copy removed", not host.file(scratch).exists)
    assert out.rc == 0, f"the probe failed: {out.stderr[-500:]}"
    result = json.loads(out.stdout)
    evidence.add("with the daemon's user PIN only, on a copy of the token", result)
    assert result["found"] == 1, "E.11: the CA key is not in the copied token"
    assert result["destroy"] != "DESTROYED" and result["still_there"] == 1, (
        "E.11: the user PIN destroyed the CA key"
    )
    assert result["label"] != "CHANGED" and result["sign"] != "CHANGED", (
        "E.11: the user PIN changed the CA key"
    )
    assert result["destroyable"] is False and result["modifiable"] is False


@pytest.mark.check("check:E.11.routine_backup_has_no_token_store")
def test_routine_backup_has_no_token_store(host, evidence):
    newest = host.run(f"ls -1t {BACKUP_DIR}/ckms-*.cms 2>/dev/null | head -1").stdout.strip()
    key = policy(host, "backup_recipient_key_src")
    if not newest:
        pytest.fail("E.11: no routine backup on the host (ansible/backup.yml takes the first one)")
    if not key or not Path(key).is_file():
        pytest.skip("E.11: the backup recipient key is not on this controller (custodians hold it offline)")
    with tempfile.TemporaryDirectory(prefix="ckms-e11-") as tmp:
        enc = Path(tmp, "backup.cms")
        enc.write_bytes(host.file(newest).content)
        dec = subprocess.run(
            ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(enc), "-inkey", key],
            capture_output=True,
            timeout=120,
        )
        assert dec.returncode == 0, f"E.11: the backup does not decrypt: {dec.stderr[-300:]!r}"
        listing = subprocess.run(["tar", "-tf", "-"], input=dec.stdout, capture_output=True, timeout=60)
    names = listing.stdout.decode(errors="replace").splitlines()
    token_files = [n for n in names if re.search(r"(^|/)hsm/tokens[^/]*/|\.object$|(^|/)token\.object$", n)]
    evidence.add("backup listed", {"file": newest, "entries": len(names)})
    evidence.add("token-store entries in it", token_files or "none")
    assert listing.returncode == 0 and names, "E.11: the backup's archive does not list"
    assert not token_files, f"E.11: the routine backup contains the token store: {token_files[:10]}"
