"""Token probes for the cryptographic-module checks (test_token_module.py), run *on the CA host*.

Not a test module: ``ckms_checks.probe(host, cmd, script="ckms_probe_token.py")`` sends this file to the
host and runs it with the CA's venv python as the CA service user, one command per call, JSON on stdout.
``CKMS_HOME`` and ``SOFTHSM2_CONF`` say which home and token store: the live ones only for read-only
commands (``attrs``, ``nologin``, ``selftest``, ``codescan``); everything that creates objects, tries to
change attributes or logs in as SO acts on a scratch copy the calling check made and removes.

    python ckms_probe_token.py attrs                 # CA key attributes; CKA_VALUE read; private_bytes()
    python ckms_probe_token.py export                # (scratch) untrusted wrap, attribute downgrades
    python ckms_probe_token.py inject                # (scratch) C_CreateObject of a plaintext EC key
    python ckms_probe_token.py so-with-user-pin      # (scratch) the daemon's PIN as the SO PIN
    python ckms_probe_token.py nologin               # no C_Login: objects seen, signing; then with it
    python ckms_probe_token.py selftest              # the daemon's self-tests now + a negative control
    python ckms_probe_token.py restored              # the key in a restored token vs the CA certificate
    python ckms_probe_token.py codescan              # how the installed code puts keys into the token
    python ckms_probe_token.py acs                   # ACS-CA (database grants) next to ACS-HSM (token)
    python ckms_probe_token.py routes                # every route the installed daemon serves
    python ckms_probe_token.py errorstate DEST       # a second daemon on a broken copy: its answers
    python ckms_probe_token.py stage DEST [--serve EST CRL] [--foreign-ca-cert]
                                                     # a scratch copy of the live home and token in DEST
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any


def _config():
    from ckms_app.config import load_config

    return load_config(Path(os.environ["CKMS_HOME"]))


def _token(config):
    import pkcs11

    if config.token.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
    return pkcs11.lib(config.token.module).get_token(token_label=config.token.token_label)


def _pin(config) -> str:
    return config.token.pin_file.read_text().strip()


def _err(exc: BaseException) -> str:
    return type(exc).__name__


def _ca_key(session, label: str):
    from pkcs11 import Attribute, ObjectClass

    found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))
    return found[0] if len(found) == 1 else None


ATTRS = (
    "SENSITIVE",
    "ALWAYS_SENSITIVE",
    "EXTRACTABLE",
    "NEVER_EXTRACTABLE",
    "WRAP_WITH_TRUSTED",
    "LOCAL",
    "MODIFIABLE",
    "DESTROYABLE",
    "PRIVATE",
    "TOKEN",
)


def _attrs(key) -> dict[str, Any]:
    import pkcs11

    out: dict[str, Any] = {}
    for name in ATTRS:
        try:
            out[name] = bool(key[getattr(pkcs11.Attribute, name)])
        except pkcs11.PKCS11Error as exc:
            out[name] = _err(exc)
    return out


def cmd_attrs(args) -> dict:
    """Read-only: the CA key's attributes, a CKA_VALUE read, and the daemon's key object's export calls."""
    import pkcs11
    from cryptography.hazmat.primitives import serialization

    from ckms_app.hsm.token import Token

    config = _config()
    token = _token(config)
    out: dict[str, Any] = {"label": config.ca_key_label}
    with token.open(user_pin=_pin(config)) as s:
        key = _ca_key(s, config.ca_key_label)
        out["found"] = key is not None
        if key is None:
            return out
        out["attributes"] = _attrs(key)
        try:
            value = bytes(key[pkcs11.Attribute.VALUE])
            out["value_read"] = f"READ {len(value)} bytes"
        except pkcs11.PKCS11Error as exc:
            out["value_read"] = f"refused: {_err(exc)}"
    # the daemon's own key object (what the CA's code holds): every export accessor refuses
    with Token(config.token) as t:
        k = t.load_ec_key(config.ca_key_label)
        calls = {
            "private_bytes": lambda: k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "private_numbers": k.private_numbers,
        }
        out["daemon_key_object"] = {}
        for name, call in calls.items():
            try:
                call()
                out["daemon_key_object"][name] = "RETURNED KEY MATERIAL"
            except Exception as exc:  # noqa: BLE001 - any refusal is the expected answer
                out["daemon_key_object"][name] = f"refused: {_err(exc)}"
    return out


def cmd_export(args) -> dict:
    """Scratch copy only: with the daemon's user PIN, try every way to get the CA key out in clear or
    under a key the user controls, and to clear its protections."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    config = _config()
    token = _token(config)
    out: dict[str, Any] = {}
    with token.open(user_pin=_pin(config), rw=True) as s:
        key = _ca_key(s, config.ca_key_label)
        out["found"] = key is not None
        if key is None:
            return out
        out["attributes_before"] = _attrs(key)
        # a wrapping key the user can make (session object): the token must not wrap the CA key under it
        try:
            mine = s.generate_key(
                KeyType.AES,
                256,
                store=False,
                template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False},
            )
            mine_value = bytes(mine[Attribute.VALUE])
            out["user_wrapping_key"] = f"made (value known to the user: {len(mine_value)} bytes)"
            for mech in (Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_KEY_WRAP):
                try:
                    blob = mine.wrap_key(key, mechanism=mech)
                    out[f"wrap_under_user_key_{mech.name}"] = f"WRAPPED {len(blob)} bytes"
                except pkcs11.PKCS11Error as exc:
                    out[f"wrap_under_user_key_{mech.name}"] = f"refused: {_err(exc)}"
        except pkcs11.PKCS11Error as exc:
            out["user_wrapping_key"] = f"not made: {_err(exc)}"
        # downgrades of the one-way attributes
        for name, value in (("SENSITIVE", False), ("WRAP_WITH_TRUSTED", False), ("PRIVATE", False)):
            try:
                key[getattr(Attribute, name)] = value
                out[f"set_{name}_{value}"] = "CHANGED"
            except pkcs11.PKCS11Error as exc:
                out[f"set_{name}_{value}"] = f"refused: {_err(exc)}"
        # a copy of the key with the protections off
        try:
            copy = key.copy({Attribute.SENSITIVE: False, Attribute.TOKEN: False})
            try:
                value = bytes(copy[Attribute.VALUE])
                out["copy_without_sensitive"] = f"COPIED, value READ ({len(value)} bytes)"
            except pkcs11.PKCS11Error as exc:
                out["copy_without_sensitive"] = f"copied, value refused: {_err(exc)}"
        except pkcs11.PKCS11Error as exc:
            out["copy_without_sensitive"] = f"refused: {_err(exc)}"
        except AttributeError:
            out["copy_without_sensitive"] = "not offered by the binding"
        try:
            value = bytes(key[Attribute.VALUE])
            out["value_read"] = f"READ {len(value)} bytes"
        except pkcs11.PKCS11Error as exc:
            out["value_read"] = f"refused: {_err(exc)}"
        out["attributes_after"] = _attrs(key)
    return out


def cmd_inject(args) -> dict:
    """Scratch copy only: the daemon's user PIN creates a plaintext EC private key (session object)."""
    import pkcs11
    from cryptography.hazmat.primitives.asymmetric import ec
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    config = _config()
    token = _token(config)
    scalar = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    out: dict[str, Any] = {}
    with token.open(user_pin=_pin(config), rw=True) as s:
        try:
            obj = s.create_object(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.TOKEN: False,
                    Attribute.LABEL: "check-e08-plaintext",
                    Attribute.SIGN: True,
                    Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                    Attribute.VALUE: scalar.to_bytes(32, "big"),
                }
            )
            out["plaintext_private_key_create"] = "ACCEPTED"
            out["created_attributes"] = {
                k: v for k, v in _attrs(obj).items() if k in ("LOCAL", "ALWAYS_SENSITIVE")
            }
        except pkcs11.PKCS11Error as exc:
            out["plaintext_private_key_create"] = f"refused: {_err(exc)}"
    return out


def cmd_so_with_user_pin(args) -> dict:
    """Scratch copy only: the daemon's PIN (the only token secret on the host) tried as the SO PIN."""
    import pkcs11

    config = _config()
    token = _token(config)
    try:
        with token.open(so_pin=_pin(config), rw=True):
            return {"so_login_with_user_pin": "ACCEPTED"}
    except pkcs11.PKCS11Error as exc:
        return {"so_login_with_user_pin": f"refused: {_err(exc)}"}


def cmd_nologin(args) -> dict:
    """Read-only: a session without C_Login sees no private object and cannot sign; after it, it can."""
    import pkcs11
    from pkcs11 import Attribute, Mechanism, ObjectClass

    config = _config()
    token = _token(config)
    digest = hashlib.sha256(b"check A.67 " + secrets.token_bytes(8)).digest()
    out: dict[str, Any] = {"flags": [f.name for f in pkcs11.TokenFlag if f and f in token.flags and f.name]}
    with token.open() as s:
        out["private_objects_without_login"] = len(list(s.get_objects({Attribute.PRIVATE: True})))
        out["private_keys_without_login"] = len(
            list(s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        )
        out["public_keys_without_login"] = len(list(s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})))
        try:
            k = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label=config.ca_key_label)
            try:
                k.sign(digest, mechanism=Mechanism.ECDSA)
                out["sign_without_login"] = "SIGNED"
            except pkcs11.PKCS11Error as exc:
                out["sign_without_login"] = f"refused: {_err(exc)}"
        except (pkcs11.PKCS11Error, pkcs11.exceptions.NoSuchKey) as exc:
            out["sign_without_login"] = f"no key handle: {_err(exc)}"
    with token.open(user_pin=_pin(config)) as s:
        k = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label=config.ca_key_label)
        try:
            out["sign_with_login"] = f"signed ({len(k.sign(digest, mechanism=Mechanism.ECDSA))} bytes)"
        except pkcs11.PKCS11Error as exc:
            out["sign_with_login"] = f"refused: {_err(exc)}"
    return out


def cmd_selftest(args) -> dict:
    """The daemon's self-test functions with the installed code and the live token (signing only), and a
    negative control: the pairwise test against a public key that is not the token key's must fail."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from ckms_app.authority import selftest
    from ckms_app.hsm.token import Token, pairwise_consistent

    config = _config()
    cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    with Token(config.token) as token:
        key = token.load_ec_key(config.ca_key_label)
        report = selftest.run_all(config, key, cert)
        other = ec.generate_private_key(key.curve).public_key()
        wrong = pairwise_consistent(key.sign_digest, other, key.curve_info.hash_algorithm)
    return {**report.as_dict(), "pairwise_against_another_public_key": wrong}


def cmd_restored(args) -> dict:
    """The CA key in a restored token (SOFTHSM2_CONF: the restored store): its public key, a pairwise
    sign/verify against the home's CA certificate, its attributes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ckms_app.hsm.token import Token, pairwise_consistent

    config = _config()
    cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    with Token(config.token) as token:
        key = token.load_ec_key(config.ca_key_label)
        attrs = token.private_key_attributes(config.ca_key_label)
        ok = pairwise_consistent(key.sign_digest, cert.public_key(), key.curve_info.hash_algorithm)
        return {
            "token_store": os.environ.get("SOFTHSM2_CONF"),
            "public_key_sha256": hashlib.sha256(key.public_key().public_bytes(*spki)).hexdigest(),
            "ca_cert_public_key_sha256": hashlib.sha256(cert.public_key().public_bytes(*spki)).hexdigest(),
            "pairwise_with_ca_certificate": ok,
            "attributes": attrs,
        }


def cmd_codescan(args) -> dict:
    """Every place the installed ckms_app creates, generates or unwraps a key object in the token."""
    from ckms_app.authority import selftest

    code = selftest.CODE_DIR
    calls: dict[str, list[str]] = {
        "create_object": [],
        "unwrap_key": [],
        "generate_keypair": [],
        "generate_key": [],
    }
    for path in sorted(code.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in calls
            ):
                text = ast.get_source_segment(path.read_text(), node) or ""
                cls = next(
                    (c for c in ("PRIVATE_KEY", "SECRET_KEY", "PUBLIC_KEY") if f"ObjectClass.{c}" in text), ""
                )
                calls[node.func.attr].append(f"{path.relative_to(code)}:{node.lineno} {cls}".strip())
    return {"code_dir": str(code), "calls": calls}


def cmd_acs(args) -> dict:
    """Read-only: the two access-control systems side by side. ACS-CA: the database's key.manage grants
    (resource ``key:<label>``), who holds which role, and who may run HSM functions (hsm.manage); ACS-HSM:
    the token's private keys (the daemon's user login) and the user PIN file the CA home names."""
    from sqlalchemy import select

    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import entities, entity_roles, role_permissions

    config = _config()
    with open_engine(config.database_url).connect() as conn:
        perms = [dict(r) for r in conn.execute(select(role_permissions)).mappings()]
        holders = [
            dict(r) for r in conn.execute(select(entity_roles.c.entity_id, entity_roles.c.role)).mappings()
        ]
        status = {r["entity_id"]: r["status"] for r in conn.execute(select(entities)).mappings()}
    from pkcs11 import Attribute, ObjectClass

    token = _token(config)
    with token.open(user_pin=_pin(config)) as s:
        keys = sorted(
            str(k[Attribute.LABEL]) for k in s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        )
    st = config.token.pin_file.stat()
    return {
        "key_grants": sorted(
            {
                (p["role"], p["resource"].removeprefix("key:"))
                for p in perms
                if p["resource"].startswith("key:")
            }
        ),
        "hsm_manage_roles": sorted({p["role"] for p in perms if p["operation"] == "hsm.manage"}),
        "role_holders": sorted((h["role"], h["entity_id"], status.get(h["entity_id"], "?")) for h in holders),
        "token_private_keys": keys,
        "ca_key_label": config.ca_key_label,
        "audit_key_label": config.audit.key_label,
        "pin_file": {"path": str(config.token.pin_file), "uid": st.st_uid, "mode": oct(st.st_mode & 0o777)},
        "service_uid": os.getuid(),
    }


def cmd_routes(args) -> dict:
    """Every route the installed daemon serves (its route modules registered on empty applications)."""
    from aiohttp import web

    from ckms_app.daemon import api_routes, crl_routes, est_routes, guard_routes

    app, crl = web.Application(), web.Application()
    for mod in (guard_routes, est_routes, api_routes):
        mod.add_routes(app)
    crl_routes.add_routes(crl)
    routes = []
    for a in (app, crl):
        for r in a.router.routes():
            info = r.resource.canonical if r.resource is not None else "?"
            routes.append(
                f"{r.method} {info} -> {getattr(r.handler, '__module__', '?')}.{getattr(r.handler, '__name__', '?')}"
            )
    return {"routes": sorted(set(routes))}


# --- the scratch copy ----------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer: scalars and lists, nested tables and arrays of tables (all ckms.toml holds,
    e.g. [[ca.retired]] after a key rollover)."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not _is_table_array(v)
    ]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + _toml(v, name)
        elif _is_table_array(v):
            for item in v:
                out += f"\n[[{name}]]\n" + _toml(item, name)
    return out


def _rehome(v: Any, old: str, new: str) -> Any:
    if isinstance(v, str) and old in v:
        return v.replace(old, new)
    if isinstance(v, dict):
        return {k: _rehome(x, old, new) for k, x in v.items()}
    if isinstance(v, list):
        return [_rehome(x, old, new) for x in v]
    return v


def cmd_stage(args) -> dict:
    """Copy the live home (database by SQLite's online backup, token store as files) into DEST/home, with
    every path of ckms.toml and of the SoftHSM configuration pointing into the copy. ``--serve`` also
    sets the copy up to run a second daemon: loopback, the given ports, one worker, no alerts or seals
    to syslog. ``--foreign-ca-cert`` replaces the copy's CA certificate with one of another key (the
    token's key then no longer matches the CA certificate: a wrong or damaged token)."""
    import re
    import shutil
    import sqlite3
    import tomllib

    live = Path(os.environ["CKMS_HOME"]).resolve()
    dest = Path(args.dest).resolve()
    home = dest / "home"
    config = _config()
    db = config.database_url
    db_file = Path(db.removeprefix("sqlite:///")) if db.startswith("sqlite:///") else None
    skip = {db_file.name, db_file.name + "-wal", db_file.name + "-shm"} if db_file else set()

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if db_file and Path(directory) == db_file.parent and n in skip}

    shutil.copytree(live, home, symlinks=True, ignore=ignore)
    out: dict[str, Any] = {"home": str(home)}
    if db_file is not None:
        copy = Path(str(db_file).replace(str(live), str(home)))
        if str(db_file).startswith(str(live)):
            src = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
            dst = sqlite3.connect(copy)
            src.backup(dst)
            dst.close()
            src.close()
            out["database"] = str(copy)
        else:
            raise SystemExit(f"the database {db_file} is outside the home: not copied")
    # the token store: its SoftHSM configuration names the directory
    conf_src = config.token.softhsm_conf or Path(os.environ.get("SOFTHSM2_CONF", live / "hsm/softhsm2.conf"))
    text = conf_src.read_text()
    m = re.search(r"^\s*directories\.tokendir\s*=\s*(\S+)", text, re.M)
    tokendir = Path(m.group(1)) if m else live / "hsm/tokens"
    if str(tokendir).startswith(str(live)):
        new_tokens = Path(str(tokendir).replace(str(live), str(home)))
    else:
        new_tokens = dest / "tokens"
        shutil.copytree(tokendir, new_tokens, symlinks=True)
    conf = dest / "softhsm2.conf"
    conf.write_text(
        re.sub(
            r"^(\s*directories\.tokendir\s*=\s*)\S+",
            lambda mm: mm.group(1) + str(new_tokens),
            text,
            flags=re.M,
        )
        if m
        else f"directories.tokendir = {new_tokens}\nobjectstore.backend = file\n"
    )
    out.update(softhsm_conf=str(conf), tokendir=str(new_tokens))
    raw = _rehome(tomllib.loads((live / "ckms.toml").read_text()), str(live), str(home))
    if raw.get("hsm", {}).get("softhsm_conf"):
        raw["hsm"]["softhsm_conf"] = str(conf)
    if args.serve:
        est, crl = args.serve
        raw["server"].update(listen="127.0.0.1", est_port=est, crl_port=crl, workers=1)
        raw["alerts"] = {"syslog": False}
        raw.setdefault("audit", {})["seal_syslog"] = False
        out["ports"] = {"est": est, "crl": crl}
    (home / "ckms.toml").write_text(_toml(raw))
    if args.foreign_ca_cert:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        real = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(real.subject)
            .issuer_name(real.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        # the real certificate's extensions, with key identifiers of the other key
        for ext in real.extensions:
            value = ext.value
            if isinstance(value, x509.SubjectKeyIdentifier):
                value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            elif isinstance(value, x509.AuthorityKeyIdentifier):
                value = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
            cert = cert.add_extension(value, critical=ext.critical)
        cert = cert.sign(key, hashes.SHA256())
        target = Path(str(config.ca_cert).replace(str(live), str(home)))
        target.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out["foreign_ca_cert"] = str(target)
    return out


def _http(url: str, method: str = "GET", body: bytes | None = None, ctype: str | None = None) -> dict:
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the scratch daemon's TLS certificate names the live address
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": ctype} if ctype else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            status, headers, data = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        status, headers, data = exc.code, dict(exc.headers), exc.read()
    except OSError as exc:
        return {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
    return {"status": status, "headers": headers, "body": data.decode(errors="replace")[:600]}


def cmd_errorstate(args) -> dict:
    """A second daemon on a scratch copy (DEST) whose CA certificate is not the token key's: start it on
    loopback and spare ports, read /health, ask it to issue and publish, stop it; its answers, its trail."""
    import signal
    import socket
    import sqlite3
    import subprocess
    import time

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    socks = [socket.socket() for _ in range(2)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    est, crl = (sk.getsockname()[1] for sk in socks)
    for sk in socks:
        sk.close()
    staged = cmd_stage(argparse.Namespace(dest=args.dest, serve=(est, crl), foreign_ca_cert=True))
    home = Path(staged["home"])
    db = sqlite3.connect(f"file:{staged['database']}?mode=ro", uri=True)
    last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0]
    db.close()
    env = {**os.environ, "CKMS_HOME": str(home), "SOFTHSM2_CONF": staged["softhsm_conf"]}
    ckms = str(Path(sys.executable).parent / "ckms")
    log = Path(args.dest) / "serve.log"
    out: dict[str, Any] = {"ports": [est, crl], "staged": staged}
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            ["timeout", "-k", "5", "90", ckms, "ca", "serve", "--home", str(home)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, stopped as a whole below
        )
    try:
        base = f"https://127.0.0.1:{est}"
        health: dict = {"status": 0}
        while time.monotonic() - t0 < 40 and proc.poll() is None:
            health = _http(f"{base}/health")
            if health["status"]:
                break
            time.sleep(0.2)
        out["health"] = health
        out["answered_after_s"] = round(time.monotonic() - t0, 2)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "check-e36")]))
            .sign(key, hashes.SHA256())
        )
        der = csr.public_bytes(serialization.Encoding.DER)
        import base64

        b64 = base64.encodebytes(der)
        out["answers"] = {
            "EST simpleenroll": _http(
                f"{base}/.well-known/est/simpleenroll", "POST", b64, "application/pkcs10"
            ),
            "EST identity simpleenroll": _http(
                f"{base}/.well-known/est/identity/simpleenroll", "POST", b64, "application/pkcs10"
            ),
            "API certificate lookup": _http(f"{base}/api/v1/certificates/01"),
            "API CRL publish": _http(f"{base}/api/v1/crl/publish", "POST", b"{}", "application/json"),
            "CRL listener health": _http(f"http://127.0.0.1:{crl}/health"),
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        out["exit"] = proc.returncode
    db = sqlite3.connect(f"file:{staged['database']}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    out["records"] = [
        dict(r)
        for r in db.execute(
            "SELECT seq, at, entity_id, role, action, target, outcome, detail "
            "FROM audit_events WHERE seq > ? ORDER BY seq",
            (last,),
        )
    ]
    db.close()
    out["log"] = log.read_text(errors="replace")[-1500:]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    commands = {
        "attrs": cmd_attrs,
        "export": cmd_export,
        "inject": cmd_inject,
        "so-with-user-pin": cmd_so_with_user_pin,
        "nologin": cmd_nologin,
        "selftest": cmd_selftest,
        "restored": cmd_restored,
        "codescan": cmd_codescan,
        "acs": cmd_acs,
        "routes": cmd_routes,
    }
    commands["stage"] = cmd_stage
    commands["errorstate"] = cmd_errorstate
    for name in commands:
        p = sub.add_parser(name)
        if name == "stage":
            p.add_argument("dest")
            p.add_argument("--serve", nargs=2, type=int, metavar=("EST_PORT", "CRL_PORT"))
            p.add_argument("--foreign-ca-cert", action="store_true")
        if name == "errorstate":
            p.add_argument("dest")
    args = ap.parse_args(argv)
    print(json.dumps(commands[args.cmd](args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
