"""Read-only probes the hardening checks run *on the CA host* with the daemon's own code.

Not a test module: ``ckms_checks.probe()`` sends this file to the host and runs it with the CA's venv
python as the CA service user (``CKMS_HOME`` set), one command per call, JSON on stdout. Nothing here
writes to the live CA home: the trail is read, the integrity check and the self-tests are the
daemon's functions called directly (``ckms selftest`` would record its run and could enter the error
state), and anything that must be modified (a database copy, a code copy, a restored home) is a
scratch copy the calling check created and removes.

    python ckms_probe.py trail [--since ISO] [--action A ...] [--limit N]
    python ckms_probe.py kat
    python ckms_probe.py integrity            # code of the ckms_app on sys.path (PYTHONPATH: a copy)
    python ckms_probe.py verify-db SQLITE_FILE
    python ckms_probe.py token [--probe-defaults]
    python ckms_probe.py spare HOME           # self-tests + trail of a restored (scratch) home
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_PINS = (
    "1234",
    "12345678",
    "123456",
    "0000",
    "00000000",
    "1111",
    "111111",
    "password",
    "userpin",
    "sopin",
    "so-pin",
    "user-pin",
    "ckms",
    "softhsm",
)


def _home() -> Path:
    return Path(os.environ["CKMS_HOME"])


def _config(home: Path | None = None):
    from ckms_app.config import load_config

    return load_config(home or _home())


def _rows(url: str, since: str | None, actions: list[str], limit: int) -> list[dict]:
    from sqlalchemy import select

    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import audit_events

    q = select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit)
    if actions:
        q = q.where(audit_events.c.action.in_(actions))
    out = []
    with open_engine(url).connect() as conn:
        for r in conn.execute(q).mappings():
            row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(r).items()}
            if since and row["at"] < since:
                continue
            out.append(row)
    return out[::-1]


def _audit_public_key(config):
    from cryptography.hazmat.primitives import serialization

    from ckms_app.audit.seals import AUDIT_PUBLIC_KEY_FILE
    from ckms_app.errors import HsmError
    from ckms_app.hsm.token import Token

    try:
        with Token(config.token) as token:
            return token.load_ec_key(config.audit.key_label).public_key(), "token"
    except HsmError:
        path = config.home / AUDIT_PUBLIC_KEY_FILE
        if path.exists():
            return serialization.load_pem_public_key(path.read_bytes()), str(path)
        return None, "none"


def cmd_trail(args) -> dict:
    return {"records": _rows(_config().database_url, args.since, args.action, args.limit)}


def cmd_kat(args) -> dict:
    from ckms_app.authority import selftest

    return {"checks": [c.__dict__ for c in selftest.known_answer_tests()]}


def cmd_integrity(args) -> dict:
    from cryptography import x509

    from ckms_app.authority import selftest

    config = _config()
    check = selftest.integrity_test(config, x509.load_pem_x509_certificate(config.ca_cert.read_bytes()))
    return {"code_dir": str(selftest.CODE_DIR), **check.__dict__}


def cmd_verify_db(args) -> dict:
    from ckms_app.audit import verify
    from ckms_app.store.engine import open_engine

    public_key, source = _audit_public_key(_config())
    report = verify.verify_database(open_engine(f"sqlite:///{args.file}"), public_key)
    return {**report.as_dict(), "audit_key_from": source}


def cmd_token(args) -> dict:
    import pkcs11

    config = _config()
    tc = config.token
    if tc.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = str(tc.softhsm_conf)
    lib = pkcs11.lib(tc.module)
    token = lib.get_token(token_label=tc.token_label)
    out: dict = {"module": tc.module, "label": tc.token_label}
    if args.probe_defaults:
        # SO first: python-pkcs11 leaves a session open after a refused login, and an open read-only
        # session would make every later SO login fail with SessionReadOnlyExists (not a PIN verdict).
        accepted: dict[str, list[str]] = {"so": [], "user": []}
        for kind, kw, rw in (("so", "so_pin", True), ("user", "user_pin", False)):
            for candidate in DEFAULT_PINS:
                try:
                    with token.open(rw=rw, **{kw: candidate}):
                        accepted[kind].append(candidate)
                except pkcs11.exceptions.PinIncorrect:
                    pass
                except pkcs11.PKCS11Error as exc:
                    out.setdefault("probe_errors", []).append(
                        f"{kind} PIN of length {len(candidate)}: {type(exc).__name__}"
                    )
        out["default_pins_accepted"] = accepted
        out["probed"] = len(DEFAULT_PINS)
    token = lib.get_token(token_label=tc.token_label)
    out["flags"] = [f.name for f in pkcs11.TokenFlag if f and f in token.flags and f.name]
    A = pkcs11.Attribute
    with token.open() as public:  # no login
        out["private_keys_visible_without_login"] = len(
            list(public.get_objects({A.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
        )
        out["public_keys_visible_without_login"] = len(
            list(public.get_objects({A.CLASS: pkcs11.ObjectClass.PUBLIC_KEY}))
        )
    pin = tc.pin_file.read_text().strip()
    out["user_pin_length"] = len(pin)
    out["user_pin_is_a_default"] = pin in DEFAULT_PINS
    with token.open(user_pin=pin) as s:
        out["private_keys_after_login"] = len(list(s.get_objects({A.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})))
    return out


def cmd_spare(args) -> dict:
    """Self-tests and trail verification of a restored home (a spare node's view of the backup)."""
    from cryptography import x509

    from ckms_app.audit import verify
    from ckms_app.authority import selftest
    from ckms_app.hsm.token import Token
    from ckms_app.store.engine import open_engine

    config = _config(Path(args.home))
    if config.token.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    checks = selftest.known_answer_tests()
    with Token(config.token) as token:
        checks.append(selftest.pairwise_test(token.load_ec_key(config.ca_key_label), ca_cert))
    checks.append(selftest.integrity_test(config, ca_cert))
    public_key, source = _audit_public_key(config)
    trail = verify.verify_database(open_engine(config.database_url), public_key)
    return {
        "checks": [c.__dict__ for c in checks],
        "trail": trail.as_dict(),
        "audit_key_from": source,
        "ca_subject": ca_cert.subject.rfc4514_string(),
        "ca_sha256": ca_cert.fingerprint(
            __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()
        ).hex(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trail")
    t.add_argument("--since")
    t.add_argument("--action", action="append", default=[])
    t.add_argument("--limit", type=int, default=500)
    sub.add_parser("kat")
    sub.add_parser("integrity")
    v = sub.add_parser("verify-db")
    v.add_argument("file")
    tk = sub.add_parser("token")
    tk.add_argument("--probe-defaults", action="store_true")
    sp = sub.add_parser("spare")
    sp.add_argument("home")
    args = ap.parse_args(argv)
    fn = {
        "trail": cmd_trail,
        "kat": cmd_kat,
        "integrity": cmd_integrity,
        "verify-db": cmd_verify_db,
        "token": cmd_token,
        "spare": cmd_spare,
    }[args.cmd]
    print(json.dumps(fn(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
