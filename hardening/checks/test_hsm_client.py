"""Checks of the hsm_client role (E.01, E.07 a, A.43): the CA's PKCS#11 token is usable only by the CA
service user, opens with the PIN file, and offers the mechanisms the CA needs.

Run over SSH against an inventory (make report) or by Molecule (roles/hsm_client/molecule)."""

from __future__ import annotations

import json
import shlex

import pytest
from ckms_checks import inventory_vars

testinfra_hosts = ["ansible://ca"]

USER = "ckms"
HOME = "/var/lib/ckms"
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
CONF = f"{HOME}/hsm/softhsm2.conf"
TOKEN_DIR = f"{HOME}/hsm/tokens"
PIN_FILE = f"{HOME}/secrets/token-pin"
LABEL = "ckms-ca"


def module_of(host) -> str:
    """The PKCS#11 module the inventory names (ckms_hsm_module); SoftHSM2's outside an inventory."""
    v = inventory_vars(host)
    return str(v.get("ckms_hsm_module") or v.get("hsm_client_module") or SOFTHSM)


def as_ckms(host, command: str):
    return host.run(f"runuser -u {USER} -- env SOFTHSM2_CONF={CONF} {command}")


@pytest.mark.check("check:E.01.token_usable_only_by_ca_service_user")
def test_token_usable_only_by_ca_service_user(host, evidence):
    rows = {}
    for path in (HOME, f"{HOME}/hsm", TOKEN_DIR, f"{HOME}/secrets", PIN_FILE, CONF):
        f = host.file(path)
        rows[path] = {
            "exists": f.exists,
            "user": f.user if f.exists else None,
            "mode": oct(f.mode) if f.exists else None,
        }
    evidence.add("owner and mode", rows)
    for path in (HOME, f"{HOME}/hsm", TOKEN_DIR, f"{HOME}/secrets"):
        assert rows[path]["user"] == USER and rows[path]["mode"] == "0o700", (
            f"E.01: {path} is not {USER}'s with mode 0700: {rows[path]}"
        )
    assert rows[PIN_FILE]["user"] == USER and rows[PIN_FILE]["mode"] == "0o600", (
        f"E.01: the PIN file is not {USER}'s with mode 0600: {rows[PIN_FILE]}"
    )
    # another unprivileged account can neither list the token store nor read the PIN
    other = host.run(f"runuser -u nobody -- sh -c 'ls {TOKEN_DIR}; cat {PIN_FILE}'")
    evidence.add("as nobody", {"rc": other.rc, "stderr": other.stderr.strip()[:300]})
    assert other.rc != 0 and "Permission denied" in other.stderr, (
        "E.01: another account can list the token store or read the PIN"
    )
    # and the SO PIN is not kept on the host
    so = host.run(f"find {HOME} -name '*so-pin*'")
    evidence.add("SO PIN files on the host", so.stdout.strip() or "none")
    assert so.stdout.strip() == "", f"E.01: SO PIN files on the host: {so.stdout.strip()}"


@pytest.mark.check("check:A.43.pkcs11_module_loads")
def test_pkcs11_module_loads_and_pin_opens_token(host, evidence):
    MODULE = module_of(host)
    status = as_ckms(host, f"/usr/local/sbin/ckms-pkcs11-token status --module {MODULE} --label {LABEL}")
    evidence.add("token status (no PIN)", status.stdout.strip() or status.stderr.strip())
    assert status.rc == 0 and json.loads(status.stdout)["initialized"]
    login = as_ckms(
        host,
        f"/usr/local/sbin/ckms-pkcs11-token login --module {MODULE} --label {LABEL} --pin-file {PIN_FILE}",
    )
    evidence.add("user login with the PIN file", login.stdout.strip() or login.stderr.strip())
    assert login.rc == 0
    bad = host.run(
        f"sh -c 'f=$(mktemp); echo wrong-pin-000000 >$f; chown {USER} $f; "
        f"runuser -u {USER} -- env SOFTHSM2_CONF={CONF} /usr/local/sbin/ckms-pkcs11-token login "
        f"--module {MODULE} --label {LABEL} --pin-file $f; rc=$?; rm -f $f; exit $rc'"
    )
    evidence.add("user login with a wrong PIN", bad.stderr.strip())
    assert bad.rc != 0


@pytest.mark.check("check:E.07.a.token_offers_required_mechanisms")
def test_token_offers_required_mechanisms(host, evidence):
    MODULE = module_of(host)
    out = as_ckms(host, f"pkcs11-tool --module {MODULE} --token-label {LABEL} -M")
    names = {line.strip().split(",")[0] for line in out.stdout.splitlines()[1:]}
    need = {"ECDSA-KEY-PAIR-GEN", "ECDSA", "AES-KEY-WRAP"}
    evidence.add("required", sorted(need))
    evidence.add("offered", sorted(names))
    assert out.rc == 0 and need <= names, f"E.07 a: the token lacks {sorted(need - names)}"


@pytest.mark.check("check:E.01.daemon_uses_inventory_module")
def test_daemon_uses_inventory_module(host, evidence):
    """The CA signs through the module the inventory names, not a simulated HSM that a default put there:
    the daemon's configuration names it and the daemon's processes have exactly that library mapped."""
    if host.run("systemctl cat ckms-ca.service").rc != 0:
        pytest.skip("E.01: no CA daemon on this host (hsm_client alone: the ckms_ca checks cover the daemon)")
    wanted = module_of(host)
    real = host.run(f"readlink -f {shlex.quote(wanted)}").stdout.strip()
    conf = host.run(f"grep -E '^module *=' {HOME}/ckms.toml").stdout.strip()
    # every process of the unit (supervisor, workers, lint helpers), whatever the cgroup hierarchy
    pids = host.run("grep -l 'ckms-ca.service$' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3").stdout.split()
    mapped: dict[str, list[str]] = {}
    for pid in pids:
        maps = host.run(f"grep -E 'pkcs11|softhsm|\\.so' /proc/{pid}/maps").stdout
        libs = sorted({line.split()[-1] for line in maps.splitlines() if line.split()[-1].startswith("/")})
        # the python-pkcs11 extension (site-packages/pkcs11/_pkcs11*.so) is the binding, not a module
        mapped[pid] = [
            lib
            for lib in libs
            if lib in (wanted, real) or "softhsm" in lib or ("pkcs11" in lib and "-packages/" not in lib)
        ]
    evidence.add("inventory module", {"ckms_hsm_module": wanted, "resolved": real})
    evidence.add("daemon configuration", conf)
    evidence.add("PKCS#11 libraries mapped by the daemon's processes", mapped)
    assert wanted in conf, f"E.01: ckms.toml does not name {wanted}: {conf}"
    using = [pid for pid, libs in mapped.items() if wanted in libs or real in libs]
    assert using, f"E.01: no process of ckms-ca has {wanted} mapped: {mapped}"
    others = {pid: [lib for lib in libs if lib not in (wanted, real)] for pid, libs in mapped.items()}
    assert not any(others.values()), f"E.01: another PKCS#11 library is mapped: {others}"
