"""``ckms hsm …`` (2-of-3 custody, wrapped backup/restore, key generation/destruction),
``ckms selftest`` and ``ckms ca recover``.

Custodian credentials are given as ``--share-file F`` (repeatable) with, in the same order,
``--passphrase-file P`` (0600) or, if absent, a no-echo prompt. Every attempt is audited: the
custodians presented, the operation and the outcome; refusals say why (too few custodians, wrong
passphrase, foreign or corrupted share).
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from ckms_app.audit.record import named, record_now
from ckms_app.authority import selftest
from ckms_app.authority.guard import ServiceState
from ckms_app.config import Config, load_config
from ckms_app.errors import CkmsError, CustodyError, HsmError
from ckms_app.hsm import admin as hsm_admin
from ckms_app.hsm import backup as hsm_backup
from ckms_app.hsm import custody
from ckms_app.hsm.custody import CustodySecret
from ckms_app.hsm.token import Token, read_secret_file
from ckms_app.store.engine import open_engine
from ckms_app.store.writer import GroupCommitWriter

CUSTODIAN_ROLE = "custodian"


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")


def _add_custodians(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--share-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a custodian's share file (give two, from two custodians)",
    )
    p.add_argument(
        "--passphrase-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="0600 file with the passphrase of the share file in the same position; "
        "without it the passphrase is prompted for",
    )
    p.add_argument("--json", action="store_true")


def add_parsers(sub: Any, ca: Any) -> None:
    hsm = sub.add_parser("hsm", help="HSM administration under 2-of-3 custodian control")
    hsm_sub = hsm.add_subparsers(dest="hsm_command", required=True)
    cust = hsm_sub.add_parser("custody", help="the custodians' shares").add_subparsers(
        dest="custody_command", required=True
    )
    split = cust.add_parser(
        "split",
        help="split the SO PIN and a new key-wrapping key among custodians; destroys secrets/token-so-pin",
    )
    _add_home(split)
    split.add_argument(
        "--custodian",
        action="append",
        default=[],
        required=True,
        metavar="NAME",
        help="custodian name (give three)",
    )
    split.add_argument(
        "--passphrase-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="0600 file with that custodian's passphrase, same order; else prompted twice",
    )
    split.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where to write <name>.share (0600); hand each to its custodian",
    )
    split.add_argument("--threshold", type=int, default=2)
    split.add_argument("--json", action="store_true")

    backup = hsm_sub.add_parser("backup", help="export the CA key wrapped under the custody KWK")
    _add_home(backup)
    backup.add_argument("--out", type=Path, required=True)
    _add_custodians(backup)
    restore = hsm_sub.add_parser("restore", help="restore a wrapped backup into a fresh token")
    _add_home(restore)
    restore.add_argument("--in", dest="infile", type=Path, required=True)
    restore.add_argument(
        "--token-dir",
        type=Path,
        help="SoftHSM: directory of the new token (default: hsm/tokens-<time> in the home)",
    )
    _add_custodians(restore)
    keygen = hsm_sub.add_parser("keygen", help="generate a new CA key pair in the token (rotation)")
    _add_home(keygen)
    keygen.add_argument("--label", required=True)
    keygen.add_argument("--curve", default="P-256", choices=["P-256", "P-384"])
    _add_custodians(keygen)
    destroy = hsm_sub.add_parser("destroy-key", help="destroy a key pair in the token")
    _add_home(destroy)
    destroy.add_argument("--label", required=True)
    _add_custodians(destroy)
    check = hsm_sub.add_parser("custody-check", help="prove two custodians can open the token as SO")
    _add_home(check)
    _add_custodians(check)

    st = sub.add_parser("selftest", help="run the self-tests (KAT, HSM pairwise, integrity)")
    _add_home(st)
    st.add_argument(
        "--record",
        action="store_true",
        help="administrator, after an upgrade: record the installed files as the new manifest",
    )
    st.add_argument("--json", action="store_true")
    rec = ca.add_parser(
        "recover", help="leave the error state after fixing its cause (re-runs the self-tests)"
    )
    _add_home(rec)
    rec.add_argument("--json", action="store_true")


def _audit(
    config: Config, *, entity: str, role: str, action: str, target: str, outcome: str, detail: dict[str, Any]
) -> None:
    if not config.database_url.startswith("sqlite") or (config.home / "db").exists():
        writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
        try:
            record_now(writer, named(entity, role), action, target, outcome, detail)
        finally:
            writer.close()


def _custodian_entity(names: list[str]) -> str:
    return "custodians:" + ",".join(names) if names else "custodians:none"


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def run(args: argparse.Namespace, home: Path) -> int:
    config = load_config(home)
    if args.command == "selftest":
        return _selftest(config, args)
    if args.command == "ca":
        return _recover(config, args)
    if args.hsm_command == "custody":
        return _split(config, args)
    operations: dict[str, tuple[str, Callable[[custody.CustodySecret, str], dict[str, Any]], str]] = {
        "backup": (
            "hsm.backup",
            lambda s, cid: hsm_backup.backup(config, s, args.out, cid),
            config.ca_key_label,
        ),
        "restore": (
            "hsm.restore",
            lambda s, cid: hsm_backup.restore(config, s, args.infile, args.token_dir),
            config.ca_key_label,
        ),
        "keygen": (
            "hsm.key.generate",
            lambda s, cid: hsm_admin.generate_key(config, s, args.label, args.curve),
            getattr(args, "label", ""),
        ),
        "destroy-key": (
            "hsm.key.destroy",
            lambda s, cid: hsm_admin.destroy_key(config, s, args.label),
            getattr(args, "label", ""),
        ),
        "custody-check": (
            "hsm.custody.check",
            lambda s, cid: _custody_check(config, s),
            config.token.token_label,
        ),
    }
    action, operation, target = operations[args.hsm_command]
    presented: list[str] = []
    try:
        record = custody.CustodyRecord.load(home)
        creds = custody.gather_credentials(args.share_file, args.passphrase_file)
        presented = sorted(c.sealed.custodian for c in creds)
        secret, names = custody.reconstruct(record, creds)
    except CustodyError as exc:
        _audit(
            config,
            entity=_custodian_entity(presented),
            role=CUSTODIAN_ROLE,
            action=action,
            target=target,
            outcome="denied",
            detail={"reason": str(exc), "custodians": presented},
        )
        raise
    try:
        result = operation(secret, record.custody_id)
    except CkmsError as exc:
        _audit(
            config,
            entity=_custodian_entity(names),
            role=CUSTODIAN_ROLE,
            action=action,
            target=target,
            outcome="denied" if isinstance(exc, CustodyError) else "error",
            detail={"reason": str(exc), "custodians": names},
        )
        raise
    finally:
        del secret
    _audit(
        config,
        entity=_custodian_entity(names),
        role=CUSTODIAN_ROLE,
        action=action,
        target=target,
        outcome="success",
        detail={"custodians": names, **{k: v for k, v in result.items() if k != "backup"}},
    )
    _print({**result, "custodians": names}, args.json)
    return 0


def _split(config: Config, args: argparse.Namespace) -> int:
    home = config.home
    if custody.record_path(home).exists():
        raise CustodyError(
            "this CA already has a custody set; its shares stay valid (re-sharing is not supported)"
        )
    so_pin_file = home / "secrets" / "token-so-pin"

    so_pin = read_secret_file(so_pin_file)
    names: list[str] = args.custodian
    if len(names) != 3 and args.threshold == 2:
        raise CustodyError("give three --custodian names for 2-of-3 custody")
    passphrases = [read_secret_file(p) for p in args.passphrase_file]
    for name in names[len(passphrases) :]:
        first = getpass.getpass(f"new passphrase for custodian {name}: ")
        if getpass.getpass(f"repeat the passphrase for {name}: ") != first:
            raise CustodyError(f"the two passphrases for {name} differ")
        passphrases.append(first)
    record = custody.new_record(names, config.token.token_label, args.threshold)
    secret = custody.CustodySecret(so_pin, hsm_admin.token_random(config, custody.KWK_BYTES))
    hsm_admin.verify_so(config, secret)  # the SO PIN is right before anything is destroyed
    sealed = custody.split_secret(secret, record, passphrases)
    # Prove the set works before the plaintext PIN goes: every pair rebuilds the secret.
    for i in range(len(sealed)):
        for j in range(i + 1, len(sealed)):
            rebuilt, _ = custody.reconstruct(
                record,
                [
                    custody.Credential(sealed[i], passphrases[i]),
                    custody.Credential(sealed[j], passphrases[j]),
                ],
            )
            if rebuilt != secret:
                raise CustodyError("self-check of the new shares failed; nothing was changed")
    paths = []
    for name, share in zip(names, sealed, strict=True):
        path = args.out_dir / f"{name}.share"
        custody.write_share_file(path, share)
        paths.append(str(path))
    record.save(home)
    custody.destroy_file(so_pin_file)
    _audit(
        config,
        entity=_custodian_entity(sorted(names)),
        role=CUSTODIAN_ROLE,
        action="hsm.custody.split",
        target=config.token.token_label,
        outcome="success",
        detail={
            "custody_id": record.custody_id,
            "custodians": names,
            "threshold": record.threshold,
            "kwk_id": hsm_backup.kwk_fingerprint(secret),
            "so_pin_file": "destroyed",
        },
    )
    _print(
        {
            "custody_id": record.custody_id,
            "threshold": f"{record.threshold} of {len(names)}",
            "shares": paths,
            "so_pin_file": "destroyed",
        },
        args.json,
    )
    return 0


def _open_key(config: Config) -> tuple[Any, Any, Any]:
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    try:
        token = Token(config.token)
        return token, token.load_ec_key(config.ca_key_label), ca_cert
    except HsmError:
        return None, None, ca_cert


def _selftest(config: Config, args: argparse.Namespace) -> int:
    token, key, ca_cert = _open_key(config)
    try:
        if args.record:
            if key is None:
                raise HsmError("recording a manifest needs the CA key in the token (it signs the manifest)")
            path = selftest.record_manifest(config, key, recorded_by=getpass.getuser())
            _audit(
                config,
                entity=f"local:{getpass.getuser()}",
                role="administrator",
                action="selftest.record",
                target=str(path),
                outcome="success",
                detail={},
            )
        report = selftest.run_all(config, key, ca_cert)
    finally:
        if token is not None:
            token.close()
    state = ServiceState(config.home)
    if not report.ok:
        state.enter(f"self-test failed: {report.reason()}", source="ckms selftest")
    _audit(
        config,
        entity=f"local:{getpass.getuser()}",
        role="administrator",
        action="selftest.run",
        target="ckms",
        outcome="success" if report.ok else "error",
        detail={"reason": report.reason()},
    )
    result = {**report.as_dict(), **state.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for c in report.checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if state.in_error:
            print(f"error state: {state.reason}")
    return 0 if report.ok else 1


def _recover(config: Config, args: argparse.Namespace) -> int:
    token, key, ca_cert = _open_key(config)
    try:
        report = selftest.run_all(config, key, ca_cert)
    finally:
        if token is not None:
            token.close()
    state = ServiceState(config.home)
    before = state.reason
    if report.ok:
        state.clear()
    _audit(
        config,
        entity=f"local:{getpass.getuser()}",
        role="administrator",
        action="daemon.recover",
        target="ckms",
        outcome="success" if report.ok else "denied",
        detail={"previous_reason": before, "selftest": report.reason()},
    )
    result = {"recovered": report.ok, "previous_reason": before, **report.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            "recovered: the CA serves again" if report.ok else f"still in the error state: {report.reason()}"
        )
    return 0 if report.ok else 1


def _custody_check(config: Config, secret: CustodySecret) -> dict[str, str]:
    hsm_admin.verify_so(config, secret)  # raises unless the two custodians' shares open the SO session
    return {"custody": "ok"}
