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

from ckms_app.authority import rollover_gate
from ckms_app.cli import confirm as confirm_cli
from ckms_app.cli import selftest_cli
from ckms_app.cli.local_audit import audit_local as _audit
from ckms_app.config import Config, load_config
from ckms_app.errors import CkmsError, CustodyError
from ckms_app.hsm import admin as hsm_admin
from ckms_app.hsm import backup as hsm_backup
from ckms_app.hsm import custody, reissue, zeroise
from ckms_app.hsm.custody import CustodySecret
from ckms_app.hsm.token import read_secret_file
from ckms_app.i18n import translator

CUSTODIAN_ROLE = "custodian"


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")


def add_custodians(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_reissue(p: argparse.ArgumentParser) -> None:
    _add_home(p)
    add_custodians(p)
    p.add_argument(
        "--new-passphrase-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="0600 file with a new share's passphrase, in custodian order; else prompted twice",
    )
    p.add_argument("--out-dir", type=Path, required=True, help="where to write the new <name>.share files")


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
    split.add_argument(
        "--threshold", type=int, default=2, help="shares needed to rebuild the secret (default %(default)s)"
    )
    split.add_argument("--json", action="store_true", help="print the result as JSON")

    backup = hsm_sub.add_parser("backup", help="export the CA key wrapped under the custody KWK")
    _add_home(backup)
    backup.add_argument("--out", type=Path, required=True, help="where to write the wrapped backup")
    add_custodians(backup)
    restore = hsm_sub.add_parser("restore", help="restore a wrapped backup into a fresh token")
    _add_home(restore)
    restore.add_argument(
        "--in", dest="infile", type=Path, required=True, help="the wrapped backup to restore"
    )
    restore.add_argument(
        "--token-dir",
        type=Path,
        help="SoftHSM: directory of the new token (default: hsm/tokens-<time> in the home)",
    )
    add_custodians(restore)
    keygen = hsm_sub.add_parser("keygen", help="generate a new CA key pair in the token (rotation)")
    _add_home(keygen)
    keygen.add_argument("--label", required=True, help="label of the new key pair in the token")
    keygen.add_argument(
        "--curve",
        default="P-256",
        choices=["P-256", "P-384"],
        help="curve of the new key (default %(default)s)",
    )
    add_custodians(keygen)
    destroy = hsm_sub.add_parser(
        "destroy-key",
        help="destroy a key pair: re-initialise the token with the SO PIN, keeping every other key pair",
    )
    _add_home(destroy)
    destroy.add_argument("--label", required=True, help="label of the key pair to destroy")
    destroy.add_argument(
        "--retire-current",
        action="store_true",
        help="allow destroying the key the CA (or its audit seal) uses now; the CA stops signing",
    )
    add_custodians(destroy)
    confirm_cli.add_yes(destroy)
    change = hsm_sub.add_parser(
        "change-so-pin", help="set a new random SO PIN and give the same custodians new shares"
    )
    _add_reissue(change)
    reshare = cust.add_parser(
        "reshare", help="new shares (and a new SO PIN) for three, possibly new, custodians"
    )
    reshare.add_argument(
        "--custodian", action="append", default=[], required=True, metavar="NAME", help="new custodian"
    )
    _add_reissue(reshare)
    check = hsm_sub.add_parser("custody-check", help="prove two custodians can open the token as SO")
    _add_home(check)
    add_custodians(check)

    st = sub.add_parser("selftest", help="run the self-tests (KAT, HSM pairwise, integrity)")
    _add_home(st)
    st.add_argument(
        "--record",
        action="store_true",
        help="administrator, after an upgrade: record the installed files as the new manifest",
    )
    st.add_argument("--json", action="store_true", help="print the result as JSON")
    rec = ca.add_parser(
        "recover", help="leave the error state after fixing its cause (re-runs the self-tests)"
    )
    _add_home(rec)
    rec.add_argument("--json", action="store_true", help="print the result as JSON")


def custodian_entity(names: list[str]) -> str:
    return "custodians:" + ",".join(names) if names else "custodians:none"


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def run(args: argparse.Namespace, home: Path) -> int:
    if getattr(args, "hsm_command", None) == "destroy-key":  # irreversible: confirmed first (A.49)
        confirm_cli.confirm(args, args.label)
    config = load_config(home)
    if args.command == "selftest":
        return selftest_cli.run_selftest(config, args)
    if args.command == "ca":
        return selftest_cli.run_recover(config, args)
    if args.hsm_command == "custody" and args.custody_command == "split":
        return _split(config, args)
    record = custody.CustodyRecord.load(home) if custody.record_path(home).exists() else None
    operations: dict[str, tuple[str, Operation, str]] = {
        "backup": (
            "hsm.backup",
            lambda s, cid, _: hsm_backup.backup(config, s, args.out, cid),
            config.ca_key_label,
        ),
        "restore": (
            "hsm.restore",
            lambda s, cid, _: hsm_backup.restore(config, s, args.infile, args.token_dir),
            config.ca_key_label,
        ),
        "keygen": (
            "hsm.key.generate",
            lambda s, cid, _: hsm_admin.generate_key(config, s, args.label, args.curve),
            getattr(args, "label", ""),
        ),
        "destroy-key": (
            "hsm.key.destroy",
            lambda s, cid, names: _destroy_key(config, s, cid, names, args),
            getattr(args, "label", ""),
        ),
        "change-so-pin": (
            "hsm.so_pin.change",
            lambda s, cid, _: _replace_set(config, s, record, None, args),
            config.token.token_label,
        ),
        "reshare": (
            "hsm.custody.reshare",
            lambda s, cid, _: _replace_set(config, s, record, getattr(args, "custodian", None), args),
            config.token.token_label,
        ),
        "custody-check": (
            "hsm.custody.check",
            lambda s, cid, _: _custody_check(config, s),
            config.token.token_label,
        ),
    }
    command = args.custody_command if args.hsm_command == "custody" else args.hsm_command
    action, operation, target = operations[command]
    result, names = under_custody(config, args, action, target, operation)
    _print({**result, "custodians": names}, args.json)
    return 0


#: An operation run with the secret two custodians rebuilt: (secret, custody set id, custodian names) → result.
Operation = Callable[[CustodySecret, str, list[str]], dict[str, Any]]


def under_custody(
    config: Config, args: argparse.Namespace, action: str, target: str, operation: Operation
) -> tuple[dict[str, Any], list[str]]:
    """Run ``operation`` with the custody secret rebuilt from ``--share-file``/``--passphrase-file``.

    The one custody flow of every command that needs 2 of 3 custodians (``ckms hsm …``,
    ``ckms ca rollover …``): each attempt is audited as ``action`` on ``target`` with the custodians
    presented — ``denied`` when the shares do not rebuild the secret or the operation refuses with a
    :class:`CustodyError`, ``error`` when it fails otherwise, ``success`` with the result's fields. The
    secret is dropped as soon as the operation returns. Returns the result and the custodians' names."""
    presented: list[str] = []
    try:
        record = custody.CustodyRecord.load(config.home)
        _ = translator(getattr(args, "lang", None))
        creds = custody.gather_credentials(
            args.share_file,
            args.passphrase_file,
            prompt_text=_("passphrase of custodian {custodian} (share {index}): "),
        )
        presented = sorted(c.sealed.custodian for c in creds)
        secret, names = custody.reconstruct(record, creds)
    except CustodyError as exc:
        _audit(
            config,
            entity=custodian_entity(presented),
            role=CUSTODIAN_ROLE,
            action=action,
            target=target,
            outcome="denied",
            detail={"reason": str(exc), "custodians": presented},
        )
        raise
    try:
        result = operation(secret, record.custody_id, names)
    except CkmsError as exc:
        _audit(
            config,
            entity=custodian_entity(names),
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
        entity=custodian_entity(names),
        role=CUSTODIAN_ROLE,
        action=action,
        target=target,
        outcome="success",
        detail={"custodians": names, **{k: v for k, v in result.items() if k != "backup"}},
    )
    return result, names


def _destroy_key(
    config: Config, secret: CustodySecret, custody_id: str, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """``hsm destroy-key``: a key generation the CA still needs is refused first (the rollover's destroy
    gate); once a retired generation's key is gone, its ``[[ca.retired]]`` entry goes too."""
    rollover_gate.refuse_if_needed(config, args.label)
    result = zeroise.destroy_key(config, secret, args.label, custody_id, args.retire_current)
    return {**result, **rollover_gate.forget_destroyed(config, args.label, custodian_entity(names))}


def _new_passphrases(names: list[str], files: list[Path], lang: str | None) -> list[str]:
    """One passphrase per new custodian: from 0600 files in the same order, else prompted twice.

    The prompts are in the person's language; the error stays English (it is also the audit record's).
    """
    _ = translator(lang)
    passphrases = [read_secret_file(p) for p in files]
    for name in names[len(passphrases) :]:
        first = getpass.getpass(_("new passphrase for custodian {name}: ").format(name=name))
        if getpass.getpass(_("repeat the passphrase for {name}: ").format(name=name)) != first:
            raise CustodyError(f"the two passphrases for {name} differ")
        passphrases.append(first)
    return passphrases


def _split(config: Config, args: argparse.Namespace) -> int:
    names: list[str] = args.custodian
    passphrases = _new_passphrases(names, args.passphrase_file, args.lang)
    result = reissue.split(config, names, passphrases, args.out_dir, args.threshold)
    _audit(
        config,
        entity=custodian_entity(sorted(names)),
        role=CUSTODIAN_ROLE,
        action="hsm.custody.split",
        target=config.token.token_label,
        outcome="success",
        detail={k: v for k, v in result.items() if k != "shares"},
    )
    _print(result, args.json)
    return 0


def _replace_set(
    config: Config,
    secret: CustodySecret,
    old: custody.CustodyRecord | None,
    names: list[str] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """change-so-pin (same custodians) and reshare (new custodians): both set a new SO PIN."""
    assert old is not None  # reconstruct() succeeded, so the record exists
    new_names = list(names) if names else list(old.custodians)
    passphrases = _new_passphrases(new_names, args.new_passphrase_file, args.lang)
    return reissue.replace_set(config, secret, old, new_names, passphrases, args.out_dir)


def _custody_check(config: Config, secret: CustodySecret) -> dict[str, str]:
    hsm_admin.verify_so(config, secret)  # raises unless the two custodians' shares open the SO session
    return {"custody": "ok"}
