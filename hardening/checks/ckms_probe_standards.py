"""Read-only probes for the standards/algorithm checks (test_ca_standards.py), run *on the CA host*.

Not a test module: ``ckms_checks.probe(host, ..., script="ckms_probe_standards.py")`` sends this file to
the host and runs it with the CA's venv python as the CA service user (``CKMS_HOME`` set), one command
per call, JSON on stdout. It reads the token (a logged-in session, as a daemon worker opens one: no
wrong PIN is ever tried), the database (SELECT only), the CRL listener and the deployed lint helper;
it writes nothing to the CA home.

    python ckms_probe_standards.py ca-key              # CA key attributes + token public key vs CA cert
    python ckms_probe_standards.py config              # profiles, CA curve, TLS and lint settings
    python ckms_probe_standards.py certs [--serial S] [--subject-contains CN] [--count-only]
    python ckms_probe_standards.py signed --serial S   # a stored certificate verified under the token key
    python ckms_probe_standards.py lint --serial S | --crl full|delta   # with the deployed ckms-lint
    python ckms_probe_standards.py crl                 # the served full CRL, verified under the token key
    python ckms_probe_standards.py mechanisms          # EC key sizes the token generates
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tomllib
import urllib.request
from pathlib import Path


def _home() -> Path:
    return Path(os.environ["CKMS_HOME"])


def _config():
    from ckms_app.config import load_config

    return load_config(_home())


def _ca_cert(config):
    from cryptography import x509

    return x509.load_pem_x509_certificate(config.ca_cert.read_bytes())


def _token_public_key(config):
    """The CA signing key's public half as the token holds it (CKA_EC_POINT of the PKCS#11 object)."""
    from ckms_app.hsm.token import Token

    with Token(config.token) as token:
        return token.load_ec_key(config.ca_key_label).public_key(), token.private_key_attributes(
            config.ca_key_label
        )


def _pub_der(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def _verifies(public_key, signature: bytes, data: bytes, hash_algorithm) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
        return True
    except InvalidSignature:
        return False


def _key_info(key) -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"type": "EC", "curve": key.curve.name, "bits": key.key_size}
    if isinstance(key, rsa.RSAPublicKey):
        return {"type": "RSA", "bits": key.key_size}
    return {"type": type(key).__name__}


def _policies(cert) -> list[str] | None:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return None
    return [p.policy_identifier.dotted_string for p in ext.value]


def _cert_info(cert) -> dict:
    return {
        "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "signature_algorithm": cert.signature_algorithm_oid._name,
        "signature_algorithm_oid": cert.signature_algorithm_oid.dotted_string,
        "key": _key_info(cert.public_key()),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "policies": _policies(cert),
    }


def cmd_ca_key(args) -> dict:
    config = _config()
    ca = _ca_cert(config)
    token_pub, attrs = _token_public_key(config)
    return {
        "key_label": config.ca_key_label,
        "module": config.token.module,
        "attributes": attrs,
        "token_public_key": _pub_der(token_pub),
        "ca_cert_public_key": _pub_der(ca.public_key()),
        "ca_cert": _cert_info(ca),
        "ca_cert_self_signature_verifies_under_token_key": _verifies(
            token_pub, ca.signature, ca.tbs_certificate_bytes, ca.signature_hash_algorithm
        ),
    }


def cmd_config(args) -> dict:
    config = _config()
    raw = tomllib.loads((config.home / "ckms.toml").read_text())
    return {
        "ca_curve": raw.get("ca", {}).get("curve"),
        "default_profile": config.default_profile,
        "profiles": {
            n: {
                "policy_oid": p.policy_oid,
                "allowed_curves": list(p.allowed_curves),
                "validity_days": p.validity_days,
            }
            for n, p in config.profiles.items()
        },
        "tls_groups": list(config.server.tls_groups),
        "tls_ciphersuites": list(config.server.tls_ciphersuites),
        "public_host": config.server.public_host,
        "est_port": config.server.est_port,
        "crl_base_url": config.server.crl_base_url,
        "lint_enabled": config.lint_enabled,
        "lint_binary": config.lint_binary,
        "lint_raw": raw.get("lint", {}),
        "tls_cert": _cert_info(
            __import__("cryptography.x509", fromlist=["x"]).load_pem_x509_certificate(
                config.server.tls_cert.read_bytes()
            )
        ),
    }


def _cert_rows(serial: str | None = None, subject: str | None = None):
    from sqlalchemy import select

    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import certificates

    q = select(certificates.c.serial, certificates.c.kind, certificates.c.profile, certificates.c.der)
    if serial:
        q = q.where(certificates.c.serial == serial.lower().lstrip("0"))
    if subject:
        q = q.where(certificates.c.subject.contains(subject))
    with open_engine(_config().database_url).connect() as conn:
        yield from conn.execute(q)


def cmd_certs(args) -> dict:
    from cryptography import x509

    if args.count_only:
        from sqlalchemy import func, select

        from ckms_app.store.engine import open_engine
        from ckms_app.store.schema import certificates

        q = select(func.count()).select_from(certificates)
        out = {}
        with open_engine(_config().database_url).connect() as conn:
            out["count"] = conn.execute(q).scalar_one()
            if args.subject_contains:
                q = q.where(certificates.c.subject.contains(args.subject_contains))
                out["matching"] = conn.execute(q).scalar_one()
        return out
    rows = []
    for serial, kind, profile, der in _cert_rows(args.serial, args.subject_contains):
        info = _cert_info(x509.load_der_x509_certificate(der))
        rows.append({"db_serial": serial, "kind": kind, "profile": profile, **info})
        if args.serial:
            rows[-1]["der_b64"] = base64.b64encode(der).decode()
    if args.serial:
        return {"count": len(rows), "certificates": rows}
    # summary of everything plus every row that is out of the allowed set / beyond 2040 on P-256
    summary: dict[str, int] = {}
    for r in rows:
        k = f"{r['kind']}|{r['signature_algorithm']}|{r['key'].get('curve') or r['key']['type']}"
        summary[k] = summary.get(k, 0) + 1
    latest = max((r["not_after"] for r in rows), default=None)
    return {
        "count": len(rows),
        "summary": summary,
        "latest_not_after": latest,
        "rows": [
            {k: r[k] for k in ("db_serial", "kind", "signature_algorithm", "key", "not_after")} for r in rows
        ],
    }


def _served_crl(config, which: str = "full") -> bytes:
    url = config.server.crl_url(which, getattr(config, "ca_generation", 1))  # the active key's CRL
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def cmd_crl(args) -> dict:
    from cryptography import x509

    config = _config()
    der = _served_crl(config)
    crl = x509.load_der_x509_crl(der)
    token_pub, _ = _token_public_key(config)
    ca = _ca_cert(config)
    return {
        "url": config.server.crl_url("full", getattr(config, "ca_generation", 1)),
        "bytes": len(der),
        "issuer": crl.issuer.rfc4514_string(),
        "signature_algorithm": crl.signature_algorithm_oid._name,
        "signature_algorithm_oid": crl.signature_algorithm_oid.dotted_string,
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "entries": len(crl),
        "verifies_under_token_key": _verifies(
            token_pub, crl.signature, crl.tbs_certlist_bytes, crl.signature_hash_algorithm
        ),
        "verifies_under_ca_cert": crl.is_signature_valid(ca.public_key()),
        "der_b64": base64.b64encode(der).decode(),
    }


def cmd_signed(args) -> dict:
    """A stored certificate's signature checked under the token's CA public key."""
    from cryptography import x509

    config = _config()
    token_pub, _ = _token_public_key(config)
    (row,) = list(_cert_rows(args.serial))
    cert = x509.load_der_x509_certificate(row[3])
    return {
        "serial": row[0],
        "verifies_under_token_key": _verifies(
            token_pub, cert.signature, cert.tbs_certificate_bytes, cert.signature_hash_algorithm
        ),
        "verifies_under_ca_cert": _verifies(
            _ca_cert(config).public_key(),
            cert.signature,
            cert.tbs_certificate_bytes,
            cert.signature_hash_algorithm,
        ),
    }


def cmd_lint(args) -> dict:
    import asyncio

    from ckms_app.authority.linter import AsyncLinter, find_linter_binary

    config = _config()
    if args.crl:
        der, kind = _served_crl(config, args.crl), f"{args.crl} crl"
    else:
        (row,) = list(_cert_rows(args.serial))
        der, kind = row[3], "certificate"
    binary = find_linter_binary(config.lint_binary)

    async def run():
        async with await AsyncLinter.start(binary) as linter:
            report = await (linter.lint_crl(der) if args.crl else linter.lint_certificate(der))
            return linter.info, report

    info, report = asyncio.run(run())
    return {
        "binary": str(binary),
        "linter_info": info,
        "kind": kind,
        "ok": report.ok,
        "parse_error": report.parse_error,
        "findings": [f.__dict__ for f in report.findings],
        "blocking": [f.__dict__ for f in report.blocking],
    }


def cmd_mechanisms(args) -> dict:
    import pkcs11

    config = _config()
    if config.token.softhsm_conf:
        os.environ["SOFTHSM2_CONF"] = str(config.token.softhsm_conf)
    token = pkcs11.lib(config.token.module).get_token(token_label=config.token.token_label)
    out = {}
    for mech in (pkcs11.Mechanism.EC_KEY_PAIR_GEN, pkcs11.Mechanism.ECDSA):
        info = token.slot.get_mechanism_info(mech)
        out[mech.name] = {"min_key_length": info.min_key_length, "max_key_length": info.max_key_length}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ca-key")
    sub.add_parser("config")
    c = sub.add_parser("certs")
    c.add_argument("--serial")
    c.add_argument("--subject-contains")
    c.add_argument("--count-only", action="store_true")
    s = sub.add_parser("signed")
    s.add_argument("--serial", required=True)
    lt = sub.add_parser("lint")
    g = lt.add_mutually_exclusive_group(required=True)
    g.add_argument("--serial")
    g.add_argument("--crl", choices=("full", "delta"))
    sub.add_parser("crl")
    sub.add_parser("mechanisms")
    args = ap.parse_args(argv)
    fn = {
        "ca-key": cmd_ca_key,
        "config": cmd_config,
        "certs": cmd_certs,
        "signed": cmd_signed,
        "lint": cmd_lint,
        "crl": cmd_crl,
        "mechanisms": cmd_mechanisms,
    }[args.cmd]
    print(json.dumps(fn(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
