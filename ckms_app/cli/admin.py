"""``ckms entity …``, ``ckms acl …`` and ``ckms audit …``: local administration and audit commands.

These run on the CA host against the CA home (database and token), not through the daemon. The
acting individual is identified by a credential (``--as ENTITY`` or ``--cert FILE``) and
authenticated by their own password, read from a prompt, a 0600 ``--password-file`` or stdin
(``--password-file -``), never argv, never logged. Then the ACL decides. Nobody acts as a role, and
the token PIN only sets the first password of an entity that has none (``entity passwd``).
Changes to people, roles and the ACL are proposals a second person approves (``ckms change``);
``entity enrol`` needs no account, only the person's one-time code.

Why this module is long: the parsers of three command groups and their help texts (translated) sit beside
the handlers they call, so one file shows what an administrator or auditor can do locally.
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.audit import seal_log, seals, verify
from ckms_app.audit.seals import AUDIT_PUBLIC_KEY_FILE
from ckms_app.authority.enrolment import DEFAULT_TTL_HOURS, enrol_locally
from ckms_app.authority.entities import AdminContext
from ckms_app.authority.passwords import hash_password, read_password
from ckms_app.config import Config, load_config
from ckms_app.errors import ClientError, HsmError, PasswordError
from ckms_app.hsm.token import Token, read_secret_file
from ckms_app.i18n import translator

COMMANDS = ("entity", "acl", "audit", "change")


def _add_actor(p: argparse.ArgumentParser, token_pin: bool = False) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")
    p.add_argument("--as", dest="as_entity", metavar="ENTITY", help="your entity ID")
    p.add_argument("--cert", type=Path, help="your client certificate (PEM), identifying you instead of --as")
    p.add_argument(
        "--password-file",
        type=Path,
        help="0600 file holding your password, or - to read one line from stdin (default: prompt)",
    )
    if token_pin:
        p.add_argument(
            "--token-pin-file",
            type=Path,
            help="0600 file with the token's user PIN: sets the FIRST password of an entity that has none, "
            "nothing else",
        )


def add_parsers(sub: Any) -> None:
    entity = sub.add_parser("entity", help="individuals and their roles").add_subparsers(
        dest="entity_command", required=True
    )
    add = entity.add_parser("add", help="propose registering a person with roles (a second person approves)")
    _add_actor(add)
    add.add_argument("entity_id", help="the person's entity ID")
    add.add_argument(
        "--role",
        dest="roles",
        action="append",
        default=[],
        required=True,
        help="role to grant (authority, administrator, operator, auditor)",
    )
    grant = entity.add_parser("grant", help="propose granting a role (a second person approves)")
    _add_actor(grant)
    grant.add_argument("entity_id", help="the person's entity ID")
    grant.add_argument("role", help="the role (authority, administrator, operator, auditor)")
    revoke_role = entity.add_parser(
        "revoke-role", help="propose withdrawing a role (a second person approves)"
    )
    _add_actor(revoke_role)
    revoke_role.add_argument("entity_id", help="the person's entity ID")
    revoke_role.add_argument("role", help="the role (authority, administrator, operator, auditor)")
    disable = entity.add_parser(
        "disable", help="propose disabling a person and revoking their credential (a second person approves)"
    )
    _add_actor(disable)
    disable.add_argument("entity_id", help="the person's entity ID")
    disable.add_argument("--reason", default="privilegeWithdrawn", help="CRL reason for the credential")
    revoke = entity.add_parser("revoke", help="revoke-role with --role, disable without (proposals)")
    _add_actor(revoke)
    revoke.add_argument("entity_id", help="the person's entity ID")
    revoke.add_argument("--role", help="withdraw only this role grant")
    revoke.add_argument("--reason", default="privilegeWithdrawn", help="CRL reason for the credential")
    lst = entity.add_parser("list", help="list entities, grants and credentials")
    _add_actor(lst)
    passwd = entity.add_parser("passwd", help="set a password (your own, or as administrator anyone's)")
    _add_actor(passwd, token_pin=True)
    passwd.add_argument("entity_id", help="the person's entity ID")
    passwd.add_argument(
        "--new-password-file",
        type=Path,
        help="0600 file with the new password, or - for stdin (default: prompt)",
    )
    code = entity.add_parser(
        "enrol-code", help="propose a fresh enrolment code: you get its first half, the approver the second"
    )
    _add_actor(code)
    code.add_argument("entity_id", help="the person's entity ID")
    code.add_argument(
        "--ttl-hours",
        type=float,
        default=DEFAULT_TTL_HOURS,
        help="hours the code stays valid (default %(default)s)",
    )
    code.add_argument("--json", action="store_true", help="print the result as JSON")
    enrol = entity.add_parser(
        "enrol", help="enrol a person from their CSR and one-time code (on the CA host, as the CA user)"
    )
    enrol.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")
    enrol.add_argument("entity_id", help="the person's entity ID")
    enrol.add_argument("--csr", type=Path, required=True, help="the person's PKCS#10 request, PEM or DER")
    enrol.add_argument("--code-file", type=Path, required=True, help="0600 file with the one-time code")
    enrol.add_argument("--password-file", type=Path, help="the person's new password: 0600 file or - (stdin)")
    enrol.add_argument("--out", type=Path, help="where to write the certificate (default: stdout)")
    enrol.add_argument("--json", action="store_true", help="print the result as JSON")

    change = sub.add_parser("change", help="two-person changes to people, roles and the ACL").add_subparsers(
        dest="change_command", required=True
    )
    _add_actor(change.add_parser("list", help="proposed and decided changes"))
    for name in ("approve", "reject"):
        p = change.add_parser(name, help=f"{name} a proposed change (not your own)")
        _add_actor(p)
        p.add_argument("change_id", type=int, help="number of the change, as 'ckms change list' shows it")
        if name == "reject":
            p.add_argument("--reason", default="", help="why")
    for p in change.choices.values():
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    acl = sub.add_parser("acl", help="role → operation → resource access-control list").add_subparsers(
        dest="acl_command", required=True
    )
    acl_list = acl.add_parser("list", help="list the ACL entries")
    _add_actor(acl_list)
    for name in ("grant", "revoke"):
        p = acl.add_parser(name, help=f"propose to {name} an ACL entry (a second person approves)")
        _add_actor(p)
        p.add_argument("role", help="the role the entry is for")
        p.add_argument("operation", help="the operation, e.g. audit.read")
        p.add_argument(
            "--resource", default="*", help="'*', 'profile:NAME', 'key:LABEL' or 'kind:NAME' (default *)"
        )

    audit = sub.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    verify = audit.add_parser("verify", help="check the hash chain and HSM seals; name the first bad record")
    _add_actor(verify)
    verify.add_argument("--export", type=Path, help="verify this JSON-lines export instead of the database")
    verify.add_argument(
        "--audit-public-key",
        type=Path,
        help="PEM public key of the audit key (default: from the token, else HOME/ca/audit-key.pub.pem)",
    )
    verify.add_argument(
        "--seal-log",
        type=Path,
        help="the seals' copy outside the database (default: [audit] seal_log); its newest seal must be in the "
        "database, or the tail was cut",
    )
    verify.add_argument(
        "--max-seal-age",
        type=float,
        help="fail when the newest seal is older than this many seconds (default: [audit] seal_interval_seconds "
        "+ seal_slack_seconds; 0: do not check)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    export = audit.add_parser("export", help="write the trail and its seals as JSON lines for the auditor")
    _add_actor(export)
    export.add_argument("--out", type=Path, required=True, help="where to write the JSON lines")
    seal = audit.add_parser("seal", help="seal the chain now with the HSM audit key")
    _add_actor(seal)


_OPERATION = {
    ("entity", None): "entity.manage",
    ("acl", None): "acl.manage",
    ("audit", "verify"): "audit.read",
    ("audit", "export"): "audit.export",
    ("audit", "seal"): "key.manage",
}


def run(args: argparse.Namespace, home: Path) -> int:
    _ = translator(args.lang)
    config = load_config(home)
    if args.command == "entity" and args.entity_command == "enrol":
        return _enrol(config, args)
    sub = getattr(args, "audit_command", None)
    operation: str | None = _OPERATION.get((args.command, sub), _OPERATION.get((args.command, None)))
    if args.command == "change" or (args.command == "entity" and args.entity_command == "passwd"):
        # change: the approval checks change.approve on the change's kind; passwd: your own, or
        # entity.manage for another's (checked by set_password)
        operation = None
    with AdminContext.open(config) as ctx:
        if getattr(args, "token_pin_file", None) is not None:
            pin_ok = _token_pin_matches(config, args.token_pin_file)
            ctx.authenticate_first_password(args.entity_id, pin_ok)  # only for this entity itself
        else:
            ctx.authenticate(
                entity_id=args.as_entity,
                cert_path=args.cert,
                password=read_secret(args.password_file, _("your password: ")),
                operation=operation,
            )
        if args.command == "entity":
            return _entity(ctx, args)
        if args.command == "acl":
            return _acl(ctx, args)
        if args.command == "change":
            return _change(ctx, args)
        return _audit(ctx, config, args)


def read_secret(path: Path | None, prompt: str) -> str:
    """A password from a 0600 file, ``-`` (one line of stdin, for a pipe from a vault) or a prompt."""
    if path is not None and str(path) == "-":
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise PasswordError("no password on stdin")
        return line
    return read_password(path, prompt)


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def _entity(ctx: AdminContext, args: argparse.Namespace) -> int:
    cmd = args.entity_command
    if cmd == "add":
        _print(ctx.add_entity(args.entity_id, args.roles))
    elif cmd == "grant":
        _print(ctx.grant(args.entity_id, args.role))
    elif cmd == "revoke-role" or (cmd == "revoke" and args.role):
        _print(ctx.revoke_role(args.entity_id, args.role))
    elif cmd in ("disable", "revoke"):
        _print(ctx.disable(args.entity_id, args.reason))
    elif cmd == "list":
        _print(ctx.list_entities())
    elif cmd == "enrol-code":
        _print(ctx.issue_code(args.entity_id, args.ttl_hours))
    elif cmd == "passwd":
        _ = translator(args.lang)
        ctx.set_password(args.entity_id, read_secret(args.new_password_file, _("new password: ")))
        print(_("password of {entity} changed").format(entity=args.entity_id))
    return 0


def _change(ctx: AdminContext, args: argparse.Namespace) -> int:
    if args.change_command == "list":
        _print(ctx.list_changes())
    elif args.change_command == "approve":
        _print(ctx.approve(args.change_id))
    else:
        _print(ctx.reject(args.change_id, args.reason))
    return 0


def _enrol(config: Config, args: argparse.Namespace) -> int:
    """``ckms entity enrol``: the person's CSR and one-time code, no other authentication."""
    _ = translator(args.lang)
    code = read_secret_file(args.code_file)
    password = read_secret(args.password_file, _("your new password: ")) if args.password_file else None
    password_hash = hash_password(password) if password is not None else None  # refuse a short one first
    data = args.csr.read_bytes()
    try:
        csr_der = (
            x509.load_pem_x509_csr(data).public_bytes(serialization.Encoding.DER)
            if b"-----BEGIN" in data
            else data
        )
    except ValueError as exc:
        raise ClientError(
            _("{path}: not a PEM certificate request: {reason}").format(path=args.csr, reason=exc)
        ) from None
    done = enrol_locally(config, args.entity_id, code, csr_der, password_hash)
    pem = done.certificate.public_bytes(serialization.Encoding.PEM).decode()
    if args.out is not None:
        args.out.write_text(pem)
    result = {
        "entity": done.entity_id,
        "cert_sha256": done.cert_sha256,
        "certificate": str(args.out) if args.out is not None else pem,
        "password_set": done.password_set,
    }
    if args.json:
        _print(result)
    elif args.out is None:
        print(pem, end="")
    else:
        print(_("enrolled {entity}: certificate {out}").format(entity=done.entity_id, out=args.out))
    return 0


def _acl(ctx: AdminContext, args: argparse.Namespace) -> int:
    if args.acl_command == "list":
        _print(ctx.acl_list())
    else:
        _print(ctx.acl_change(args.acl_command == "grant", args.role, args.operation, args.resource))
    return 0


def _audit(ctx: AdminContext, config: Config, args: argparse.Namespace) -> int:
    _ = translator(args.lang)
    if args.audit_command == "seal":
        with Token(config.token) as token:
            ca_key = token.load_ec_key(config.ca_key_label)
            key = seals.ensure_audit_key(token, config.home, ca_key.curve_info, config.audit.key_label)
            sealed = seals.seal_and_log(ctx.writer, key, config.audit, force=True)
        _print({"sealed_up_to_seq": None if sealed is None else sealed["up_to_seq"]})
        return 0
    public_key = _audit_public_key(config, getattr(args, "audit_public_key", None), _)
    if args.audit_command == "export":
        count = 0
        with open(args.out, "w") as out:
            for line in verify.export_lines(ctx.reader, public_key, config.ca_name):
                out.write(line + "\n")
                count += 1
        ctx.record("audit.export", str(args.out), "success", {"lines": count})
        print(_("wrote {count} lines to {out}").format(count=count, out=args.out))
        return 0
    if args.export is not None:
        with open(args.export) as f:
            report = verify.verify_export(f, public_key)
    else:
        seal_log_path = args.seal_log or config.audit.seal_log
        max_age = (
            config.audit.max_seal_age_seconds if args.max_seal_age is None else args.max_seal_age or None
        )
        report = verify.verify_database(
            ctx.reader,
            public_key,
            external_seals=seal_log.read(seal_log_path) if seal_log_path and seal_log_path.exists() else [],
            max_seal_age_seconds=max_age,
        )
    try:
        ctx.record(
            "audit.verify",
            str(args.export or "database"),
            "success" if report.ok else "error",
            {"ok": report.ok, "first_bad_seq": report.first_bad_seq},
        )
    except Exception as exc:  # noqa: BLE001 - a damaged trail may refuse new records; still report it
        warning = _("ckms: warning: could not record this verification in the trail: {error}")
        print(warning.format(error=type(exc).__name__), file=sys.stderr)
    if args.json:
        _print({**report.as_dict(), "seals_checked": public_key is not None})
    elif report.ok:
        print(
            _(
                "audit trail OK: {records} records, {seals} seals ({unsealed} records after the last seal)"
            ).format(records=report.records, seals=report.seals, unsealed=report.unsealed_records)
            + ("" if public_key is not None else _("; no audit public key, seal signatures NOT checked"))
        )
    else:
        broken = _("audit trail BROKEN at record {seq}: {problem}")
        print(broken.format(seq=report.first_bad_seq, problem=report.problem))
    return 0 if report.ok else 2


def _token_pin_matches(config: Config, pin_file: Path) -> bool:
    """True if the PIN in ``pin_file`` (0600) is the token's user PIN.

    Compared with the configured PIN in constant time rather than tried on the token, so a wrong
    guess never counts towards the token's PIN lockout (which would stop the CA).
    """
    given = read_secret_file(pin_file)
    return hmac.compare_digest(given.encode(), read_secret_file(config.token.pin_file).encode())


def _audit_public_key(
    config: Config, explicit: Path | None, _: Callable[[str], str]
) -> ec.EllipticCurvePublicKey | None:
    """The audit key's public half: given, else from the token (authoritative), else the home's copy."""

    if explicit is not None:
        return _load_ec_public_key(explicit, _)
    try:
        with Token(config.token) as token:
            return token.load_ec_key(config.audit.key_label).public_key()
    except HsmError:
        path = config.home / AUDIT_PUBLIC_KEY_FILE
        if path.exists():
            return _load_ec_public_key(path, _)
        return None


def _load_ec_public_key(path: Path, _: Callable[[str], str]) -> ec.EllipticCurvePublicKey:
    """A PEM public key that can check audit seals: seals are ECDSA, so only an EC key will do."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ClientError(
            _("{path}: the audit public key must be an EC key, not {kind}").format(
                path=path, kind=type(key).__name__
            )
        )
    return key
