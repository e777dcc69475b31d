"""The CA's cryptographic module on the deployed CA (E.01, E.06-E.10, E.12, E.32, E.35, E.36, A.58, A.67).

What the token lets the daemon, the custodians and anyone else do, observed on the CA host:

* read-only on the live token (``ckms_probe_token.py`` with the CA's python, as the CA user): the CA key's
  attributes, a CKA_VALUE read, sessions without C_Login, the daemon's self-test functions;
* everything that logs in as SO, creates objects, tries to change or export the key, restores a backup
  or starts a second daemon acts on a scratch copy of the CA home and token store (``stage``) under
  /var/tmp, removed at the end of the module. The custodians' shares come from the controller
  (``ckms_custody.staged``), as for the custody checks.

The live daemon is never stopped or reconfigured: the error-state checks (E.36) start a second daemon
on the scratch copy, on loopback and spare ports, with a CA certificate that does not belong to the
token's key, and stop it again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
from ckms_checks import CA_USER, CA_VENV, active_ca_cert, as_ckms, in_container, probe, systemd_props
from ckms_custody import available, credentials, record, staged

testinfra_hosts = ["ansible://ca"]

PROBE = "ckms_probe_token.py"
CKMS = f"{CA_VENV}/bin/ckms"
UNIT = "ckms-ca.service"
SCRATCH = "/var/tmp/ckms-token-check-"


def _tp(host, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return probe(host, *args, env=env, script=PROBE)


def _detail(rec: dict) -> dict:
    try:
        return json.loads(rec.get("detail") or "{}")
    except ValueError:
        return {}


def _current_start(host) -> dict[str, Any]:
    """The running daemon's workers (children of the unit's main process), the token sessions they opened
    and the start-up self-test records after them: this start's, not an earlier one's in the same second."""
    main = systemd_props(host, UNIT, "MainPID").get("MainPID", "0")
    workers = [int(p) for p in host.run(f"pgrep -P {main}").stdout.split()] if main not in ("", "0") else []
    recs = probe(host, "trail", "--action", "selftest.run", "--action", "hsm.session.open", "--limit", "500")[
        "records"
    ]
    sessions = [
        r
        for r in recs
        if r["action"] == "hsm.session.open"
        and _detail(r).get("purpose") == "serve"
        and _detail(r).get("pid") in workers
    ]
    first = min((r["seq"] for r in sessions), default=None)
    starts = [
        r
        for r in recs
        if first is not None
        and r["seq"] > first
        and r["action"] == "selftest.run"
        and _detail(r).get("trigger") == "start"
    ]
    return {"main_pid": main, "workers": workers, "sessions": sessions, "starts": starts}


def _brief(recs: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("seq", "at", "outcome", "detail")} for r in recs]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def scratch(host) -> Iterator[dict[str, Any]]:
    """A copy of the live home and token store in a private directory of the CA user (removed after)."""
    d = host.run(f"runuser -u {CA_USER} -- mktemp -d {SCRATCH}XXXXXX").stdout.strip()
    assert d.startswith(SCRATCH), "cannot make a scratch directory on the CA host"
    try:
        staged_copy = _tp(host, "stage", d)
        env = {"CKMS_HOME": staged_copy["home"], "SOFTHSM2_CONF": staged_copy["softhsm_conf"]}
        assert env["SOFTHSM2_CONF"].startswith(d) and env["CKMS_HOME"].startswith(d)
        yield {"dir": d, "env": env, **staged_copy}
    finally:
        host.run(f"rm -rf {shlex.quote(d)}")


@pytest.fixture(scope="module")
def custodians_on_host(host) -> Iterator[tuple[list[dict], list[str]]]:
    """Two custodians' shares on the CA host for the module (E.22 procedure: copied 0600, removed after)."""
    chosen = available(host)[:2]
    if len(chosen) < 2:
        pytest.skip("fewer than two custodians' shares on this controller (custodians hold them offline)")
    with staged(host, chosen) as args:
        yield chosen, args


@pytest.fixture(scope="module")
def wrapped(host, scratch, custodians_on_host) -> dict[str, Any]:
    """A custody-wrapped backup of the copied token (two custodians), kept in the scratch directory."""
    _, cargs = custodians_on_host
    out = f"{scratch['dir']}/ca-key.backup"
    made = as_ckms(
        host,
        shlex.join([CKMS, "hsm", "backup", "--home", scratch["home"], "--out", out, "--json", *cargs]),
        env=scratch["env"],
    )
    assert made.rc == 0, (
        f"two custodians cannot make a wrapped backup of the token copy: {made.stderr[-400:]}"
    )
    body = json.loads(host.file(out).content_string)
    return {"path": out, "body": body, "result": json.loads(made.stdout)}


def _restore(host, scratch, cargs: list[str], backup: str, name: str):
    """``ckms hsm restore`` of ``backup`` into a fresh token store ``<scratch>/<name>`` (its own SoftHSM
    configuration, never the live one)."""
    d = scratch["dir"]
    conf = f"{d}/{name}.conf"
    assert conf.startswith(SCRATCH)
    res = as_ckms(
        host,
        shlex.join(
            [CKMS, "hsm", "restore", "--home", scratch["home"], "--in", backup, "--token-dir", f"{d}/{name}",
             "--json", *cargs]
        ),
        env={**scratch["env"], "SOFTHSM2_CONF": conf},
    )  # fmt: skip
    return res, conf


def _put(host, path: str, text: str) -> None:
    b64 = base64.b64encode(text.encode()).decode()
    out = as_ckms(host, f"echo {b64} | base64 -d > {shlex.quote(path)} && chmod 600 {shlex.quote(path)}")
    assert out.rc == 0, f"cannot write {path}: {out.stderr}"


@pytest.fixture(scope="module")
def selftest_now(host) -> dict[str, Any]:
    """The daemon's self-test functions run now with the installed code and the live token (signing only)."""
    return _tp(host, "selftest")


@pytest.fixture(scope="module")
def export_attempts(host, scratch) -> dict[str, Any]:
    return _tp(host, "export", env=scratch["env"])


@pytest.fixture(scope="module")
def custody_check(host, scratch, custodians_on_host) -> dict[str, Any]:
    """``ckms hsm custody-check`` by two custodians, straight to the token copy (no daemon serves it), and
    the record it left on the copy's trail."""
    chosen, cargs = custodians_on_host
    running = host.run(
        f"pgrep -u {CA_USER} -f {shlex.quote('serve --home ' + scratch['home'])}"
    ).stdout.strip()
    res = as_ckms(
        host,
        shlex.join([CKMS, "hsm", "custody-check", "--home", scratch["home"], "--json", *cargs]),
        scratch["env"],
    )
    trail = probe(host, "trail", "--action", "hsm.custody.check", "--limit", "5", env=scratch["env"])[
        "records"
    ]
    return {
        "custodians": sorted(c["name"] for c in chosen),
        "daemon_for_copy": running or "none",
        "rc": res.rc,
        "out": (res.stdout or res.stderr)[-300:],
        "record": trail[-1] if trail else None,
    }


# ------------------------------------------------------------------------------------------ E.01
@pytest.mark.check("check:E.01.hsm_admin_bypasses_ca_daemon")
def test_hsm_admin_bypasses_ca_daemon(host, scratch, custody_check, evidence):
    """HSM administration does not go through the CA: the daemon serves no HSM-administration route, its
    PIN (the only token secret on the host) is not the SO's, and two custodians open the token as SO
    directly with ``ckms hsm`` (here: the token copy, for which no daemon runs)."""
    routes = _tp(host, "routes")["routes"]
    words = ("hsm", "backup", "restore", "keygen", "custody", "so-pin", "so_pin", "destroy", "wrap", "token")
    admin_like = [r for r in routes if any(w in r.split(" -> ")[0].lower() for w in words)]
    so = _tp(host, "so-with-user-pin", env=scratch["env"])
    evidence.add("routes of the installed daemon", routes)
    evidence.add("routes naming HSM administration", admin_like or "none")
    evidence.add("SO login with the daemon's user PIN (token copy)", so)
    evidence.add("ckms hsm custody-check by two custodians, straight to the token copy", custody_check)
    assert routes, "E.01: the daemon's routes could not be listed"
    assert not admin_like, f"E.01: the CA daemon serves HSM administration: {admin_like}"
    assert so["so_login_with_user_pin"].startswith("refused"), (
        "E.01: the daemon's PIN opens the token as security officer"
    )
    assert custody_check["rc"] == 0 and custody_check["daemon_for_copy"] == "none", (
        f"E.01: two custodians cannot authenticate to the token without the daemon: {custody_check['out']}"
    )


# ------------------------------------------------------------------------------------------ E.06
@pytest.mark.check("check:E.06.acs_ca_and_token_consistent")
def test_acs_ca_and_token_consistent(host, custody_check, evidence):
    """ACS-CA (the database's grants) and ACS-HSM (the token's roles) describe the same system: every key
    the CA grants rights on is in the token and every private key in the token is granted; HSM functions
    are an administrator's in the CA; the token's user role is held by the CA service alone (its PIN file,
    the CA user's, opens the token); its SO role by the custody set the CA records, whose custodians the
    trail names when they act (custody-check on the token copy)."""
    acs = _tp(host, "acs")
    ca_uid = host.user(CA_USER).uid
    granted = {label for _, label in acs["key_grants"]}
    in_token = set(acs["token_private_keys"])
    rec = record(host)
    names = custody_check["custodians"]
    entry = custody_check["record"] or {}
    evidence.add("ACS-CA: key grants (role, key label)", acs["key_grants"])
    evidence.add("ACS-CA: roles with hsm.manage", acs["hsm_manage_roles"])
    evidence.add("ACS-CA: role holders", acs["role_holders"])
    evidence.add("ACS-HSM: private keys in the token (user login)", sorted(in_token))
    evidence.add("ACS-HSM: user PIN file", {**acs["pin_file"], "ca_user_uid": ca_uid})
    evidence.add(
        "ACS-HSM: SO role held by the custody set", {"id": rec.custody_id, "custodians": rec.custodians}
    )
    evidence.add(
        "custody-check on the token copy", {k: custody_check[k] for k in ("custodians", "rc", "out")}
    )
    evidence.add(
        "its audit record (copy's trail)", {k: entry.get(k) for k in ("entity_id", "role", "outcome")}
    )
    assert granted == in_token, (
        f"E.06: the CA grants rights on keys not in the token ({sorted(granted - in_token)}) or the token "
        f"holds keys the CA does not know ({sorted(in_token - granted)})"
    )
    assert acs["ca_key_label"] in in_token, "E.06: the CA key is not in the token"
    assert acs["hsm_manage_roles"] == ["administrator"], (
        f"E.06: HSM functions are granted to {acs['hsm_manage_roles']}, not to administrators only"
    )
    assert acs["pin_file"]["uid"] == ca_uid == acs["service_uid"] and acs["pin_file"]["mode"] == "0o600", (
        "E.06: the token's user PIN is not the CA service's alone"
    )
    assert custody_check["rc"] == 0, (
        f"E.06: the recorded custodians do not hold the SO role: {custody_check['out']}"
    )
    assert set(names) <= set(rec.custodians), "E.06: custodians outside the recorded custody set"
    assert entry.get("role") == "custodian" and entry.get("entity_id") == "custodians:" + ",".join(names), (
        f"E.06: the CA's trail does not name the custodians who acted on the token: {entry}"
    )


# ------------------------------------------------------------------------------------------ E.07
@pytest.mark.check("check:E.07.b.startup_self_test_runs")
def test_startup_self_test_runs(host, selftest_now, evidence):
    """Self-tests at power-on and on demand: every worker of the running daemon ran its start-up
    self-test (KAT, HSM pairwise, integrity) and passed; the same tests pass when run now."""
    cur = _current_start(host)
    now = selftest_now
    evidence.add("daemon", {"main pid": cur["main_pid"], "workers": cur["workers"]})
    evidence.add("token sessions of its workers", _brief(cur["sessions"]))
    evidence.add("start-up self-test records of this start", _brief(cur["starts"]))
    evidence.add("self-tests run now on demand (installed code, live token)", now["checks"])
    assert cur["workers"], "E.07 b: the CA daemon is not running"
    assert cur["starts"], "E.07 b: the daemon's current start ran no start-up self-test"
    assert len(cur["starts"]) >= len(cur["workers"]), (
        f"E.07 b: {len(cur['workers'])} workers but {len(cur['starts'])} start-up self-tests"
    )
    assert all(r["outcome"] == "success" for r in cur["starts"]), (
        f"E.07 b: a start-up self-test failed: {cur['starts']}"
    )
    assert now["ok"], (
        f"E.07 b: the self-tests fail on demand now: {[c for c in now['checks'] if not c['ok']]}"
    )


@pytest.mark.check("check:E.07.c.ca_key_sensitive_wrap_trusted_only")
def test_ca_key_sensitive_wrap_trusted_only(host, export_attempts, evidence):
    """The CA key in the live token is sensitive (value never readable), private, extractable only wrapped
    by a trusted key, and neither modifiable nor destroyable with the daemon's PIN; the token refuses to
    wrap it under a key the daemon's user can make (token copy)."""
    live = _tp(host, "attrs")
    a = live.get("attributes", {})
    evidence.add("CA key attributes (live token)", a)
    evidence.add("CKA_VALUE read (live token)", live.get("value_read"))
    evidence.add(
        "wrap under a user-made key (token copy)",
        {k: v for k, v in export_attempts.items() if k.startswith("wrap_under") or k == "user_wrapping_key"},
    )
    evidence.limit(
        "SoftHSM2 is software: the tamper response and physical key protection of a hardware HSM are not visible"
    )
    assert live.get("found"), "E.07 c: the CA key is not in the token"
    assert a.get("SENSITIVE") is True and a.get("ALWAYS_SENSITIVE") is True and a.get("PRIVATE") is True, (
        f"E.07 c: the CA key is not sensitive and private from its creation: {a}"
    )
    assert a.get("EXTRACTABLE") is False or a.get("WRAP_WITH_TRUSTED") is True, (
        "E.07 c: the CA key can be wrapped under any key (extractable without CKA_WRAP_WITH_TRUSTED)"
    )
    assert a.get("MODIFIABLE") is False and a.get("DESTROYABLE") is False, (
        "E.07 c: the CA key can be changed or destroyed with the user PIN"
    )
    assert str(live.get("value_read", "")).startswith("refused"), "E.07 c: the CA key's value was read"
    wraps = [v for k, v in export_attempts.items() if k.startswith("wrap_under")]
    assert wraps and all(str(v).startswith("refused") for v in wraps), (
        f"E.07 c: the CA key was wrapped under a key the daemon's user made: {wraps}"
    )


# ------------------------------------------------------------------------------------------ E.08
@pytest.mark.check("check:E.08.key_input_only_by_unwrap")
def test_key_input_only_by_unwrap(host, scratch, evidence):
    """Keys enter the token only by generation inside it or by unwrapping a wrapped backup: the installed
    code creates no private key object from a value (its only C_CreateObject calls are the session KWK
    and public keys; private keys come from C_GenerateKeyPair and C_UnwrapKey). Whether the token itself
    refuses a plaintext private key from the user PIN is shown on the token copy."""
    scan = _tp(host, "codescan")
    inject = _tp(host, "inject", env=scratch["env"])
    calls = scan["calls"]
    evidence.add("installed code", scan["code_dir"])
    evidence.add("C_CreateObject calls (object class)", calls["create_object"])
    evidence.add("C_UnwrapKey calls", calls["unwrap_key"])
    evidence.add("C_GenerateKeyPair calls", calls["generate_keypair"])
    evidence.add("plaintext EC private key created with the user PIN (token copy)", inject)
    if inject["plaintext_private_key_create"] == "ACCEPTED":
        evidence.limit(
            "SoftHSM2 has no policy to refuse C_CreateObject of a plaintext private key by the user PIN; "
            "ckms offers no such path, a production HSM's policy must refuse it (E.07 d procurement)"
        )
    assert not [c for c in calls["create_object"] if "PRIVATE_KEY" in c], (
        f"E.08: the installed code creates private keys from a value: {calls['create_object']}"
    )
    assert all("SECRET_KEY" not in c or c.startswith("hsm/admin.py") for c in calls["create_object"]), (
        "E.08: a secret key is created from a value outside the custody KWK"
    )
    assert [c for c in calls["unwrap_key"] if "PRIVATE_KEY" in c], "E.08: no unwrap path for the CA key"
    assert calls["generate_keypair"], "E.08: no key generation in the token"


# ------------------------------------------------------------------------------------------ E.09
def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.check("check:E.09.tampered_backup_rejected")
def test_tampered_backup_rejected(host, scratch, custodians_on_host, wrapped, evidence):
    """A wrapped backup with one bit changed in the wrapped key is refused on restore into a fresh token:
    as is, by the file's MAC; with the MAC made again from the custodians' KWK (an attacker who had it),
    by the token's own integrity check on C_UnwrapKey (RFC 5649)."""
    from ckms_app.hsm import backup as hsm_backup
    from ckms_app.hsm import custody

    chosen, cargs = custodians_on_host
    body = wrapped["body"]
    ca = body["ca_key_label"]
    entry = next(k for k in body["keys"] if k["label"] == ca)
    d = scratch["dir"]
    # 1: one bit of the wrapped key changed, nothing else
    t1 = json.loads(json.dumps(body))
    next(k for k in t1["keys"] if k["label"] == ca)["wrapped_private_key"] = _flip(
        entry["wrapped_private_key"]
    )
    _put(host, f"{d}/tampered-1.backup", json.dumps(t1, indent=2))
    r1, _ = _restore(host, scratch, cargs, f"{d}/tampered-1.backup", "tokens-t1")
    store1 = host.run(f"find {d}/tokens-t1 -name '*.object' 2>/dev/null | wc -l").stdout.strip()
    # 2: the same change with a valid MAC (made here from the KWK the two custodians' shares rebuild)
    secret, _ = custody.reconstruct(record(host), credentials(chosen))
    t2 = json.loads(json.dumps(t1))
    t2["mac"] = hmac.new(hsm_backup._mac_key(secret), hsm_backup._canonical(t2), hashlib.sha256).hexdigest()
    del secret
    _put(host, f"{d}/tampered-2.backup", json.dumps(t2, indent=2))
    r2, _ = _restore(host, scratch, cargs, f"{d}/tampered-2.backup", "tokens-t2")
    evidence.add("backup", {"file": wrapped["path"], "keys": [k["label"] for k in body["keys"]]})
    evidence.add("restore of the altered backup", {"rc": r1.rc, "stderr": r1.stderr.strip()[-300:]})
    evidence.add("token objects written by it", store1 or "0")
    evidence.add(
        "restore of the altered backup with a recomputed MAC",
        {"rc": r2.rc, "stderr": r2.stderr.strip()[-300:]},
    )
    assert r1.rc != 0 and "MAC mismatch" in r1.stderr, "E.09: an altered backup was not refused by its MAC"
    assert store1 in ("", "0"), "E.09: the altered backup reached a token"
    assert r2.rc != 0 and "refused to unwrap" in r2.stderr, (
        f"E.09: the token did not refuse a wrapped key with one bit changed: {r2.stderr[-300:]}"
    )


# ------------------------------------------------------------------------------------------ E.10
@pytest.mark.check("check:E.10.ca_key_export_only_wrapped")
def test_ca_key_export_only_wrapped(host, export_attempts, wrapped, evidence):
    """With the daemon's PIN the CA key leaves the token neither in clear nor under a key the user made
    (token copy); with two custodians it leaves wrapped under the custody KWK (the backup made above)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ckms_app.hsm.backup import entry_public_key

    body = wrapped["body"]
    entry = next((k for k in body["keys"] if k["label"] == body["ca_key_label"]), None)
    blob = base64.b64decode(entry["wrapped_private_key"]) if entry else b""
    cert = x509.load_pem_x509_certificate(host.file(active_ca_cert(host)).content)
    same_key = bool(entry) and entry_public_key(entry)[1].public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = json.dumps(body)
    evidence.add(
        "with the user PIN (token copy)", {k: v for k, v in export_attempts.items() if "attributes" not in k}
    )
    evidence.add(
        "with two custodians",
        {"format": body.get("format"), "mechanism": body.get("mechanism"), "keys": [k["label"] for k in body["keys"]],
         "wrapped CA key bytes": len(blob), "its public key is the CA certificate's": same_key},
    )  # fmt: skip
    outs = {
        k: v
        for k, v in export_attempts.items()
        if k.startswith("wrap_under") or k in ("value_read", "copy_without_sensitive")
    }
    assert outs and all(not str(v).startswith(("WRAPPED", "READ", "COPIED")) for v in outs.values()), (
        f"E.10: the CA key left the token without the custodians: {outs}"
    )
    assert entry and same_key and body.get("mechanism") == "CKM_AES_KEY_WRAP_PAD", (
        "E.10: the custodians' backup does not hold the CA key wrapped"
    )
    assert len(blob) >= 40 and len(blob) % 8 == 0 and "PRIVATE KEY" not in text, (
        "E.10: the backup's CA key is not an RFC 5649 wrapping"
    )


# ------------------------------------------------------------------------------------------ E.12
@pytest.mark.check("check:E.12.plaintext_export_refused")
def test_plaintext_export_refused(host, export_attempts, evidence):
    """No plaintext way out: CKA_VALUE of the live CA key is refused, so are the daemon's own key object's
    export calls; on the token copy the user PIN can neither clear CKA_SENSITIVE / WRAP_WITH_TRUSTED /
    PRIVATE nor copy the key without them."""
    live = _tp(host, "attrs")
    evidence.add("CKA_VALUE read (live token)", live.get("value_read"))
    evidence.add("the daemon's key object", live.get("daemon_key_object"))
    downgrades = {k: v for k, v in export_attempts.items() if k.startswith("set_") or k.startswith("copy_")}
    evidence.add("attribute downgrades and copies (token copy)", downgrades)
    evidence.add("attributes after the attempts", export_attempts.get("attributes_after"))
    assert str(live.get("value_read", "")).startswith("refused"), "E.12: the CA key's value was read in clear"
    assert all(str(v).startswith("refused") for v in live.get("daemon_key_object", {}).values()), (
        "E.12: the daemon's key object returned key material"
    )
    assert downgrades and all(not str(v).startswith(("CHANGED", "COPIED")) for v in downgrades.values()), (
        f"E.12: the CA key's protection could be lowered: {downgrades}"
    )
    after = export_attempts.get("attributes_after", {})
    assert after.get("SENSITIVE") is True and after.get("PRIVATE") is True, (
        "E.12: the key lost its protection"
    )


# ------------------------------------------------------------------------------------------ A.58
@pytest.mark.check("check:A.58.wrapped_backup_restores_into_new_token")
def test_wrapped_backup_restores_into_new_token(host, scratch, custodians_on_host, wrapped, evidence):
    """The custody-wrapped backup restores into a fresh token (its own store), where the CA key signs and
    its public key is the CA certificate's; the key keeps its protection (sensitive, wrap by trusted)."""
    _, cargs = custodians_on_host
    res, conf = _restore(host, scratch, cargs, wrapped["path"], "tokens-new")
    evidence.add(
        "backup",
        {"file": wrapped["path"], "made": wrapped["body"].get("created_at"), "note": "made now by two custodians "
         "from a copy of the live token: the lab keeps no wrapped backup (a ceremony, not a timer)"},
    )  # fmt: skip
    evidence.add(
        "ckms hsm restore into a fresh token", {"rc": res.rc, "out": (res.stdout or res.stderr)[-400:]}
    )
    assert res.rc == 0, f"A.58: the wrapped backup does not restore: {res.stderr[-400:]}"
    got = _tp(host, "restored", env={**scratch["env"], "SOFTHSM2_CONF": conf})
    stores = host.run(f"grep -h tokendir {shlex.quote(conf)} {shlex.quote(scratch['softhsm_conf'])}").stdout
    evidence.add("restored token", got)
    evidence.add("token stores (restored, copy)", stores.strip())
    assert got["token_store"] == conf and f"{scratch['dir']}/tokens-new" in stores, (
        "A.58: not a fresh token store"
    )
    assert got["public_key_sha256"] == got["ca_cert_public_key_sha256"], (
        "A.58: the restored key is not the CA certificate's key"
    )
    assert got["pairwise_with_ca_certificate"], "A.58: the restored key's signature does not verify"
    assert got["attributes"]["sensitive"] and got["attributes"]["wrap_with_trusted"], (
        f"A.58: the restored key lost its protection: {got['attributes']}"
    )


# ------------------------------------------------------------------------------------------ A.67
@pytest.mark.check("check:A.67.token_requires_login")
def test_token_requires_login(host, evidence):
    """Read-only on the live token: without C_Login no private object is visible and the CA key cannot
    be used to sign; with the CA's PIN it signs."""
    t = _tp(host, "nologin")
    evidence.add("token flags", t["flags"])
    evidence.add("without C_Login", {k: v for k, v in t.items() if k.endswith("without_login")})
    evidence.add("with the CA's user PIN", t["sign_with_login"])
    assert "LOGIN_REQUIRED" in t["flags"], "A.67: the token does not require a login"
    assert t["private_objects_without_login"] == 0 and t["private_keys_without_login"] == 0, (
        "A.67: private objects are visible without a login"
    )
    assert not t["sign_without_login"].startswith("SIGNED"), "A.67: the CA key signed without a login"
    assert t["sign_with_login"].startswith("signed"), (
        "A.67: the CA key does not sign after the login (wrong token?)"
    )


# ------------------------------------------------------------------------------------------ E.35
@pytest.mark.check("check:E.35.known_answer_tests_pass")
def test_known_answer_tests_pass(host, selftest_now, evidence):
    kat = [c for c in selftest_now["checks"] if c["name"].startswith("kat.")]
    evidence.add("known-answer tests of the installed code", kat)
    names = {c["name"] for c in kat}
    assert {"kat.sha256", "kat.sha384", "kat.ecdsa_p256_verify"} <= names, f"E.35: KATs missing: {names}"
    assert all(c["ok"] for c in kat), f"E.35: a known-answer test failed: {[c for c in kat if not c['ok']]}"


@pytest.mark.check("check:E.35.pairwise_consistency_test")
def test_pairwise_consistency_test(host, selftest_now, evidence):
    """The token signs a fresh message with the CA key and the CA certificate verifies it; the same test
    against another public key fails, so it is not a test that always passes."""
    pw = next((c for c in selftest_now["checks"] if c["name"] == "hsm.pairwise"), None)
    evidence.add("pairwise sign/verify with the live token's CA key", pw)
    evidence.add("the same against another public key", selftest_now["pairwise_against_another_public_key"])
    assert pw and pw["ok"], f"E.35: the pairwise consistency test failed: {pw}"
    assert selftest_now["pairwise_against_another_public_key"] is False, (
        "E.35: the pairwise test passes against a key that is not the token key's"
    )


# -------------------------------------------------------------------------------- E.32 / E.36
@pytest.fixture(scope="module")
def broken_daemon(host) -> Iterator[dict[str, Any]]:
    """A second daemon started on a copy of the home whose CA certificate is not the token key's (a wrong
    or damaged token), on loopback and spare ports: what it answered and logged; stopped by the probe,
    its copy removed here."""
    d = host.run(f"runuser -u {CA_USER} -- mktemp -d {SCRATCH}XXXXXX").stdout.strip()
    assert d.startswith(SCRATCH), "cannot make a scratch directory on the CA host"
    try:
        yield _tp(host, "errorstate", d)
    finally:
        host.run(f"rm -rf {shlex.quote(d)}")


@pytest.mark.check("check:E.32.startup_self_tests_logged")
def test_startup_self_tests_logged(host, broken_daemon, evidence):
    """The daemon's current start logged its self-tests, after the token session they sign with; that the
    start-up tests sign with the token and verify under the CA certificate is shown by a second daemon
    whose token key is not the CA certificate's: its start-up record names the failed HSM pairwise test."""
    cur = _current_start(host)
    sessions, starts = cur["sessions"], cur["starts"]
    broken = [r for r in broken_daemon["records"] if r["action"] == "selftest.run"]
    evidence.add("daemon", {"main pid": cur["main_pid"], "workers": cur["workers"]})
    evidence.add("token sessions opened by its workers", _brief(sessions))
    evidence.add("start-up self-test records", _brief(starts))
    evidence.add("start-up record of a daemon on a token whose key is not the CA's (copy)", broken)
    assert cur["workers"] and starts, "E.32: the daemon's current start logged no start-up self-test"
    assert all(r["outcome"] == "success" for r in starts), f"E.32: a start-up self-test failed: {starts}"
    assert {_detail(r).get("pid") for r in sessions} == set(cur["workers"]), (
        "E.32: a worker of the daemon has no token session on the trail"
    )
    assert broken and all(r["outcome"] == "error" for r in broken), (
        "E.32: a start on a token whose key is not the CA certificate's logged no failed self-test"
    )
    assert any("hsm.pairwise" in _detail(r).get("reason", "") for r in broken), (
        f"E.32: the start-up self-test does not include the HSM sign/verify test: {broken}"
    )


@pytest.mark.check("check:E.32.secure_boot_enabled")
def test_secure_boot_enabled(host, evidence):
    var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    if not host.file("/sys/firmware/efi").exists:
        evidence.add("efi", "no /sys/firmware/efi")
        assert in_container(host), "E.32: no EFI firmware on this host: secure boot cannot be enabled"
        evidence.limit(
            "a lab container sees no firmware: whether the server boots with secure boot is not visible; "
            "the CA's own start-up tests (E.32 startup_self_tests_logged) are"
        )
        integrity = probe(host, "integrity")
        evidence.add("integrity of the installed code against the signed manifest", integrity)
        assert integrity["ok"], f"E.32: the installed code differs from its signed manifest: {integrity}"
        return
    raw = host.run(f"od -An -t u1 {var}").stdout.split()
    evidence.add("SecureBoot efivar", raw)
    assert raw and raw[-1] == "1", "E.32: secure boot is not enabled"


@pytest.mark.check("check:E.36.selftest_failure_enters_error_state")
def test_selftest_failure_enters_error_state(host, broken_daemon, evidence):
    """A daemon whose start-up self-test fails (here: its token's key is not the CA certificate's) comes up
    in the error state: /health says so with the cause, on both listeners, and the trail records it."""
    b = broken_daemon
    h = b["health"]
    evidence.add("scratch daemon ports (loopback)", b["ports"])
    evidence.add("/health", {"status": h["status"], "body": h.get("body", h.get("error"))})
    evidence.add(
        "its trail", [{k: r[k] for k in ("seq", "action", "outcome", "detail")} for r in b["records"]][:20]
    )
    evidence.add("its log", b["log"])
    assert h["status"], f"E.36: the scratch daemon never answered: {b['log'][-500:]}"
    health = json.loads(h["body"])
    state = health.get("checks", {}).get("error_state", "")
    assert h["status"] == 503 and health.get("status") == "error", (
        f"E.36: a daemon whose start-up self-test failed reports {h['status']} {health}"
    )
    assert state.startswith("error") and "start-up self-test failed" in state, (
        f"E.36: /health does not report the error state and its cause: {state}"
    )
    assert any(r["action"] == "selftest.run" and r["outcome"] == "error" for r in b["records"]), (
        "E.36: the failed self-test is not on the trail"
    )


@pytest.mark.check("check:E.36.error_state_refuses_signing")
def test_error_state_refuses_signing(host, broken_daemon, evidence):
    """In the error state every request that would sign (EST enrolment, CRL publication) or read is
    answered 503 with the reason and no cryptographic data, and nothing is signed (its trail)."""
    b = broken_daemon
    answers = {k: {"status": v["status"], "body": v.get("body", v.get("error", ""))[:300],
                   "retry_after": v.get("headers", {}).get("Retry-After")} for k, v in b["answers"].items()}  # fmt: skip
    signed = [
        r
        for r in b["records"]
        if r["action"] in ("certificate.issue", "crl.publish", "crl.sign") and r["outcome"] == "success"
    ]
    evidence.add("answers in the error state", answers)
    evidence.add("signatures on its trail", signed or "none")
    assert b["health"]["status"], "E.36: the scratch daemon never answered"
    for name, a in answers.items():
        assert a["status"] == 503, (
            f"E.36: {name} answered {a['status']} in the error state: {a['body'][:200]}"
        )
        assert "error" in a["body"], f"E.36: {name} gives no error-state reason"
        assert "BEGIN" not in a["body"] and "MII" not in a["body"], (
            f"E.36: {name} returned cryptographic data"
        )
    assert answers["EST simpleenroll"]["retry_after"], "E.36: the EST refusal has no Retry-After"
    assert not signed, f"E.36: the daemon signed in the error state: {signed}"
