"""``ckms ca rollover begin|import-cert|activate|status``: the CA key rollover (docs/ca-key-rollover.md).

``begin``, ``import-cert`` and ``activate`` change which keys the CA trusts and signs with, so each runs with
two custodians present, through the same custody flow and audit records as ``ckms hsm …``
(:func:`ckms_app.cli.hsm.under_custody`; actions ``ca.rollover.begin``, ``ca.rollover.import_cert``,
``ca.rollover.activate``). ``begin`` proves the custodians to the token by generating the key in an SO
session; the other two open an SO session for the same reason before they change anything.
``status`` only reads: the CA certificates, the database and ckms.toml.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckms_app.authority import rollover, rollover_gate
from ckms_app.cli import hsm as custody_cli
from ckms_app.config import Config, load_config
from ckms_app.hsm import admin as hsm_admin
from ckms_app.hsm.custody import CustodySecret
from ckms_app.i18n import translator
from ckms_app.store.engine import open_engine

COMMAND = "rollover"  # under ``ckms ca``


def add_parsers(ca: Any) -> None:
    rollover_parser = ca.add_parser(
        COMMAND, help="replace the CA key in this home: begin, activate, status (docs/ca-key-rollover.md)"
    )
    sub = rollover_parser.add_subparsers(dest="rollover_command", required=True)
    begin = sub.add_parser(
        "begin",
        help="new CA key (2 of 3 custodians), its CA certificate with the same name, and both link certificates",
    )
    _add_home(begin)
    begin.add_argument(
        "--curve", choices=["P-256", "P-384"], help="curve of the new key (default: the active key's)"
    )
    begin.add_argument(
        "--validity-days",
        type=int,
        help="validity of the new CA certificate in days (default: the active one's, cut at the curve's end of life)",
    )
    begin.add_argument(
        "--request-out",
        type=Path,
        metavar="FILE",
        help="CA under an external root: write the new key's certificate request (PEM) here instead of self-signing",
    )
    custody_cli.add_custodians(begin)
    imp = sub.add_parser(
        "import-cert",
        help="install the new CA certificate the external root signed, and make the link certificates",
    )
    _add_home(imp)
    imp.add_argument(
        "cert", type=Path, metavar="FILE", help="the new CA certificate (PEM) the external root signed"
    )
    custody_cli.add_custodians(imp)
    activate = sub.add_parser(
        "activate",
        help="issue with the new key from now on; the old key signs only its CRLs (2 of 3 custodians)",
    )
    _add_home(activate)
    custody_cli.add_custodians(activate)
    status = sub.add_parser(
        "status",
        help="each key generation: role, certificates still valid, latest CRL, whether its key may be destroyed",
    )
    _add_home(status)
    status.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")


def _with_so(config: Config, secret: CustodySecret, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The token checks the custodians (SO login with the rebuilt PIN) before a step that needs no SO session."""
    hsm_admin.verify_so(config, secret)
    return step()


def run(args: argparse.Namespace, home: Path) -> int:
    config = load_config(home)
    _ = translator(getattr(args, "lang", None))
    if args.rollover_command == "status":
        return _status(config, args, _)
    staged = config.ca_next.key_label if config.ca_next is not None else config.ca_key_label
    operations: dict[str, tuple[str, custody_cli.Operation, str]] = {
        "begin": (
            "ca.rollover.begin",
            lambda s, cid, names: rollover.begin(
                config,
                s,
                actor=custody_cli.custodian_entity(names),
                curve=args.curve,
                validity_days=args.validity_days,
                request_out=args.request_out,
            ),
            rollover.next_label(config.ca_key_label, config.ca_generation + 1),
        ),
        "import-cert": (
            "ca.rollover.import_cert",
            lambda s, cid, names: _with_so(
                config,
                s,
                lambda: rollover.import_certificate(
                    config, args.cert, actor=custody_cli.custodian_entity(names)
                ),
            ),
            rollover.next_label(config.ca_key_label, config.ca_generation + 1),
        ),
        "activate": (
            "ca.rollover.activate",
            lambda s, cid, names: _with_so(
                config, s, lambda: rollover.activate(config, actor=custody_cli.custodian_entity(names))
            ),
            staged,
        ),
    }
    action, operation, target = operations[args.rollover_command]
    result, names = custody_cli.under_custody(config, args, action, target, operation)
    if args.json:
        print(json.dumps({**result, "custodians": names}, indent=2))
        return 0
    for key, value in result.items():
        if key != "next":
            print(f"{key}: {value}")
    print(f"custodians: {', '.join(names)}")
    if result.get("status") == "pending-ca-certificate":
        print(
            _(
                "Next: have {request} signed by your root, then run 'ckms ca rollover import-cert FILE'."
            ).format(request=result["request"])
        )
    elif args.rollover_command == "activate":
        print(_("Restart the daemon so that it issues with the new key: systemctl restart ckms-ca"))
    else:
        print(
            _(
                "Next: give relying parties the new CA certificate and the link certificates, then run "
                "'ckms ca rollover activate'. Restart the daemon so that it publishes them: "
                "systemctl restart ckms-ca"
            )
        )
    return 0


def _status(config: Config, args: argparse.Namespace, _: Callable[[str], str]) -> int:
    engine = open_engine(config.database_url)
    try:
        rows = rollover_gate.status(config, engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"generations": rows}, indent=2))
        return 0
    roles = {"active": _("active"), "next": _("next"), "retired": _("retired")}
    for row in rows:
        print(
            _(
                "generation {generation} ({role}), key {label}: {subject}, key ID {key_id}, valid until {not_after}"
            ).format(
                generation=row["generation"],
                role=roles[row["role"]],
                label=row["key_label"],
                subject=row["subject"],
                key_id=row["subject_key_id"],
                not_after=row["not_after"],
            )
        )
        print(
            _("  certificates still valid: {live}; revoked but not expired: {revoked}").format(
                live=row["live_certificates"], revoked=row["revoked_unexpired"]
            )
        )
        if row["latest_crl_number"] is None:
            print(_("  latest full CRL: none"))
        else:
            print(
                _("  latest full CRL: number {number}, this update {this_update}").format(
                    number=row["latest_crl_number"], this_update=row["latest_crl_this_update"]
                )
            )
        print(
            _("  key may be destroyed: {answer} ({reason})").format(
                answer=_("yes") if row["may_destroy"] else _("no"), reason=row["destroy_reason"]
            )
        )
    return 0
