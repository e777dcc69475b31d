"""Checks of the hsm_client role (E.01, E.07 a, A.43): the CA's PKCS#11 token is usable only by the CA
service user, opens with the PIN file, and offers the mechanisms the CA needs.

Run over SSH against an inventory (make report) or by Molecule (roles/hsm_client/molecule)."""

from __future__ import annotations

import json

import pytest
from ckms_checks import policy, probe

testinfra_hosts = ["ansible://ca"]

USER = "ckms"
HOME = "/var/lib/ckms"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CONF = f"{HOME}/hsm/softhsm2.conf"
TOKEN_DIR = f"{HOME}/hsm/tokens"
PIN_FILE = f"{HOME}/secrets/token-pin"
LABEL = "ckms-ca"


def as_ckms(host, command: str):
    return host.run(f"runuser -u {USER} -- env SOFTHSM2_CONF={CONF} {command}")


@pytest.mark.check("check:E.01.token_usable_only_by_ca_service_user")
def test_token_usable_only_by_ca_service_user(host, evidence):
    rows = {}
    for path in (HOME, f"{HOME}/hsm", TOKEN_DIR, f"{HOME}/secrets", PIN_FILE, CONF):
        f = host.file(path)
        rows[path] = {"exists": f.exists, "user": f.user if f.exists else None,
                      "mode": oct(f.mode) if f.exists else None}
    evidence.add("owner and mode", rows)
    for path in (HOME, f"{HOME}/hsm", TOKEN_DIR, f"{HOME}/secrets"):
        assert rows[path]["user"] == USER and rows[path]["mode"] == "0o700", (path, rows[path])
    assert rows[PIN_FILE]["user"] == USER and rows[PIN_FILE]["mode"] == "0o600"
    # another unprivileged account can neither list the token store nor read the PIN
    other = host.run(f"runuser -u nobody -- sh -c 'ls {TOKEN_DIR}; cat {PIN_FILE}'")
    evidence.add("as nobody", {"rc": other.rc, "stderr": other.stderr.strip()[:300]})
    assert other.rc != 0 and "Permission denied" in other.stderr
    # and the SO PIN is not kept on the host
    so = host.run(f"find {HOME} -name '*so-pin*'")
    evidence.add("SO PIN files on the host", so.stdout.strip() or "none")
    assert so.stdout.strip() == ""


@pytest.mark.check("check:A.43.pkcs11_module_loads")
def test_pkcs11_module_loads_and_pin_opens_token(host, evidence):
    status = as_ckms(host, f"/usr/local/sbin/ckms-pkcs11-token status --module {MODULE} --label {LABEL}")
    evidence.add("token status (no PIN)", status.stdout.strip() or status.stderr.strip())
    assert status.rc == 0 and json.loads(status.stdout)["initialized"]
    login = as_ckms(host, f"/usr/local/sbin/ckms-pkcs11-token login --module {MODULE} --label {LABEL} "
                          f"--pin-file {PIN_FILE}")
    evidence.add("user login with the PIN file", login.stdout.strip() or login.stderr.strip())
    assert login.rc == 0
    bad = host.run(f"sh -c 'f=$(mktemp); echo wrong-pin-000000 >$f; chown {USER} $f; "
                   f"runuser -u {USER} -- env SOFTHSM2_CONF={CONF} /usr/local/sbin/ckms-pkcs11-token login "
                   f"--module {MODULE} --label {LABEL} --pin-file $f; rc=$?; rm -f $f; exit $rc'")
    evidence.add("user login with a wrong PIN", bad.stderr.strip())
    assert bad.rc != 0


@pytest.mark.check("check:E.07.a.token_offers_required_mechanisms")
def test_token_offers_required_mechanisms(host, evidence):
    out = as_ckms(host, f"pkcs11-tool --module {MODULE} --token-label {LABEL} -M")
    names = {line.strip().split(",")[0] for line in out.stdout.splitlines()[1:]}
    need = {"ECDSA-KEY-PAIR-GEN", "ECDSA", "AES-KEY-WRAP"}
    evidence.add("required", sorted(need))
    evidence.add("offered", sorted(names))
    assert out.rc == 0 and need <= names


# ------------------------------------------------------------------------------------ F.06 f / F.08
def _token(host) -> dict:
    # Wrong-PIN probing can lock a vendor HSM's PIN: only SoftHSM (no retry counter) is probed.
    return probe(host, "token", *(["--probe-defaults"] if "softhsm" in MODULE else []))


@pytest.mark.check("check:F.06.f.no_default_token_pins")
def test_no_default_token_pins(host, evidence):
    t = _token(host)
    so_pin = str(policy(host, "hsm_client_so_pin") or "")
    user_pin = str(policy(host, "hsm_client_user_pin") or "")
    evidence.add("user PIN in use", {"length": t["user_pin_length"], "a well-known default": t["user_pin_is_a_default"]})
    evidence.add("default PINs the token accepted", t.get("default_pins_accepted", "not probed (vendor module)"))
    evidence.add("token flags", t["flags"])
    evidence.add("vault PINs (lengths only)", {"user": len(user_pin), "so": len(so_pin), "distinct": user_pin != so_pin})
    assert not t["user_pin_is_a_default"] and t["user_pin_length"] >= 12, "F.06 f: the token's user PIN is weak"
    assert not {"USER_PIN_TO_BE_CHANGED", "SO_PIN_TO_BE_CHANGED"} & set(t["flags"]), \
        "F.06 f: the token still asks for its initial PIN to be changed"
    accepted = t.get("default_pins_accepted", {})
    assert not t.get("probe_errors"), f"F.06 f: default PINs could not be tried: {t.get('probe_errors')}"
    assert not accepted.get("user") and not accepted.get("so"), f"F.06 f: the token accepts a default PIN: {accepted}"
    if so_pin or user_pin:  # the vault is readable here (make report): the PINs set are not defaults either
        assert len(so_pin) >= 12 and len(user_pin) >= 12 and so_pin != user_pin, \
            "F.06 f: the vault's token PINs are short or identical"


@pytest.mark.check("check:F.08.token_requires_user_login")
def test_token_requires_user_login(host, evidence):
    t = _token(host)
    evidence.add("token", {k: t[k] for k in ("module", "label", "flags")})
    evidence.add("objects seen", {k: t[k] for k in ("private_keys_visible_without_login",
                                                    "public_keys_visible_without_login",
                                                    "private_keys_after_login")})
    assert "LOGIN_REQUIRED" in t["flags"], "F.08: the token does not require a login for cryptographic use"
    assert t["private_keys_visible_without_login"] == 0, "F.08: private keys are visible without a login"
    assert t["private_keys_after_login"] >= 1, "F.08: no private key after the user login (wrong token?)"


@pytest.mark.check("check:F.08.token_so_pin_not_default")
def test_token_so_pin_not_default(host, evidence):
    t = _token(host)
    accepted = t.get("default_pins_accepted")
    so_file = host.run(f"find {HOME} /etc /root -name '*so*pin*' 2>/dev/null").stdout.strip()
    evidence.add("SO login attempts with well-known default PINs", {
        "probed": t.get("probed", 0), "accepted": (accepted or {}).get("so", "not probed (vendor module)"),
        "errors": t.get("probe_errors", [])})
    evidence.add("SO PIN files on the host", so_file or "none (2-of-3 custody: the SO PIN is split among custodians)")
    assert "SO_PIN_LOCKED" not in t["flags"], "F.08: the SO PIN is locked"
    assert "SO_PIN_TO_BE_CHANGED" not in t["flags"], "F.08: the token's SO PIN is still the initial one"
    if accepted is not None:
        assert not t.get("probe_errors"), f"F.08: default SO PINs could not be tried: {t.get('probe_errors')}"
        assert not accepted["so"], "F.08: the token's security officer accepts a default PIN"
    else:
        evidence.limit("vendor PKCS#11 module: default SO PINs are not tried (it could lock the HSM)")
    assert not so_file, f"F.08: an SO PIN is kept on the host: {so_file}"
