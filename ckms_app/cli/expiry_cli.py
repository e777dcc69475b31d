"""``ckms expiry check [--days N] [--json]``: what expires soon (issue 14 part 5; A.59, A.62).

Run daily on the CA host by the ``ckms-expiry`` timer (role ckms_ca, concern ``expiry``). Prints the CA
certificate, the daemon's TLS certificate, every active person's certificate and a summary of the
device certificates expiring within N days (``[expiry] warn_days``, 30 by default), plus any profile
whose validity no longer fits the crypto-periods. When anything is due it sends one alert through the
CA's alert channel; every run leaves an ``expiry.check`` audit record.

Exit status: 0 nothing due, 3 something due (and alerted), 1 the check itself failed (2: a usage error).
"""

from __future__ import annotations

import argparse
import json

from ckms_app.authority.expiry_watch import alert_and_record, check_expiry
from ckms_app.config import load_config, resolve_home
from ckms_app.store.schema import utcnow

COMMAND = "expiry"
EXIT_DUE = 3  # not 2: argparse exits 2 on a usage error, which must not read as "due"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    expiry = sub.add_parser(COMMAND, help="certificates that expire soon").add_subparsers(
        dest="expiry_command", required=True
    )
    check = expiry.add_parser(
        "check",
        help="report the CA, TLS, people's and (summarised) device certificates expiring soon; alert if due",
    )
    check.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")
    check.add_argument(
        "--days", type=int, default=None, help="window in days (default: [expiry] warn_days, 30)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--no-alert", action="store_true", help="report only: no alert and no audit record (a dry look)"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(resolve_home(args.home))
    report = check_expiry(config, utcnow(), args.days)
    deliveries = [] if args.no_alert else alert_and_record(config, report)
    due = report.due
    if args.json:
        doc = report.as_dict() | {"alerts": [d.__dict__ for d in deliveries]}
        print(json.dumps(doc, indent=2, default=str))
    else:
        for c in report.certificates:
            mark = "DUE " if c.due else "ok  "
            print(f"{mark}{c.kind:<10} {c.name:<40} {c.not_after}  ({c.days_left:.1f} days)")
        d = report.devices
        print(
            f"devices: {d.expiring} expiring within {report.window_days} days (earliest {d.earliest}) {d.by_profile}"
        )
        for warning in report.crypto_periods:
            print(f"WARNING: {warning}")
        for delivery in deliveries:
            print(f"alert via {delivery.channel}: {'sent' if delivery.ok else 'FAILED'} {delivery.detail}")
        print(f"{len(due)} due" if due else "nothing due")
    return EXIT_DUE if due else 0
