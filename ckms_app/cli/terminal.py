"""``ckms terminal …``: the certificate-management terminal's daily tools (A.37–A.46, issue 14).

``enrol-batch`` (a production run's CSRs in, certificates out; idempotent, resumable, parallel),
``find`` and ``list`` (the inventory, filtered and paged by the daemon), ``revoke --device-id``,
``recall`` (many devices or serials in one audited all-or-nothing batch, with a dry run) and ``export``
(CSV or JSON, streamed). Every call uses the person's own credential (:mod:`ckms_app.cli.terminal_client`),
so the CA's trail names the individual. A device ID is the subject CN of a device certificate
(:mod:`ckms_app.store.inventory`). Revocations are confirmed before any credential is read or any
connection made, as ``ckms revoke`` (:mod:`ckms_app.cli.confirm`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckms_app.cli import confirm as confirm_cli
from ckms_app.cli import terminal_batch as batch
from ckms_app.cli.terminal_client import TerminalClient, add_connection, resolve
from ckms_app.errors import ClientError
from ckms_app.i18n import resolve_language, translator

COMMAND = "terminal"
RECALL_BY = {"device-id": "device_id", "serial": "serial"}
_FILTERS = (
    ("status", "valid, revoked or expired"),
    ("profile", "certificate profile"),
    ("device_id", "device ID (the subject CN)"),
    ("subject_contains", "text the subject contains"),
    ("serial", "hex serial"),
    ("issued_from", "issued at or after (ISO 8601, UTC unless a zone is given)"),
    ("issued_to", "issued before"),
    ("expires_from", "notAfter at or after"),
    ("expires_to", "notAfter before"),
)


def _add_filters(p: argparse.ArgumentParser) -> None:
    for name, text in _FILTERS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=text)


def add_parsers(sub: Any) -> None:
    term = sub.add_parser(COMMAND, help="the certificate-management terminal's tools").add_subparsers(
        dest="terminal_command", required=True
    )
    enrol = term.add_parser("enrol-batch", help="enrol a directory or archive of CSRs; resumable")
    add_connection(enrol)
    enrol.add_argument("source", type=Path, help="directory of *.csr/*.pem, or a .tar, .tar.gz, .tgz or .zip")
    enrol.add_argument("--out", type=Path, required=True, help="where certificates and the manifest go")
    enrol.add_argument("--workers", type=int, default=4, help="parallel connections (1-16, default 4)")
    enrol.add_argument("--profile", help="certificate profile (EST label); default: the CA's default")

    find = term.add_parser("find", help="look a certificate up by device ID, subject or serial")
    add_connection(find)
    what = find.add_mutually_exclusive_group(required=True)
    what.add_argument("--device-id", dest="device_id")
    what.add_argument("--subject", dest="subject_contains", help="text the subject contains")
    what.add_argument("--serial")
    find.add_argument("--json", action="store_true")

    lst = term.add_parser("list", help="list certificates with filters, one page at a time")
    add_connection(lst)
    _add_filters(lst)
    lst.add_argument("--limit", type=int, default=100, help="page size (1-1000)")
    lst.add_argument("--cursor", help="continue after the page that printed this cursor")
    lst.add_argument("--all", action="store_true", help="follow the cursors to the last page")
    lst.add_argument("--json", action="store_true")

    revoke = term.add_parser("revoke", help="revoke every valid certificate of one device")
    add_connection(revoke)
    revoke.add_argument("--device-id", dest="device_id", required=True)
    revoke.add_argument("--reason", default="unspecified", help="RFC 5280 reason name or code")
    confirm_cli.add_yes(revoke)

    recall = term.add_parser("recall", help="revoke a list of devices or serials in one audited batch")
    add_connection(recall)
    recall.add_argument("list", type=Path, help="file with one device ID (or serial) per line; # comments")
    recall.add_argument("--by", choices=sorted(RECALL_BY), default="device-id")
    recall.add_argument("--reason", required=True, help="RFC 5280 reason name or code")
    recall.add_argument("--dry-run", action="store_true", help="show what would be revoked; change nothing")
    confirm_cli.add_yes(recall)

    export = term.add_parser("export", help="the inventory as CSV or JSON (streamed)")
    add_connection(export)
    _add_filters(export)
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")


def _query(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    return {n: str(getattr(args, n)) for n in names if getattr(args, n, None) is not None}


def _print_items(items: list[dict[str, Any]], _: Callable[[str], str]) -> None:
    for it in items:
        print(
            f"{it['serial']}  {it['status']:<8} {it['device_id'] or '-':<24} {it['profile']:<12} "
            f"{it['not_after'][:10]}  {it['subject']}"
        )


def _read_list(path: Path, _: Callable[[str], str]) -> list[str]:
    names = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ClientError(_("{path}: the list names nothing").format(path=path))
    return names


def _print_recall(doc: dict[str, Any], _: Callable[[str], str]) -> None:
    if doc["dry_run"]:
        print(_("dry run: {n} certificates would be revoked:").format(n=len(doc["would_revoke"])))
        for t in doc["would_revoke"]:
            print(f"  {t['serial']}  {t['name']}")
    else:
        print(
            _(
                "batch {batch}: revoked {n} certificates ({reason}); in the published CRL within {seconds} s"
            ).format(
                batch=doc["batch"],
                n=len(doc["revoked"]),
                reason=doc["reason"],
                seconds=doc["crl_within_seconds"],
            )
        )
    if doc["already_revoked"]:
        print(_("already revoked, left alone: {n}").format(n=len(doc["already_revoked"])))
    if doc["not_found"]:
        print(_("match no certificate: {names}").format(names=", ".join(doc["not_found"])))


def run(args: argparse.Namespace) -> int:
    lang = resolve_language(getattr(args, "lang", None))
    _ = translator(lang)
    cmd = args.terminal_command
    names: list[str] = []
    if cmd == "revoke":  # irreversible: confirmed before any credential or connection (A.49)
        confirm_cli.confirm(args, args.device_id)
    elif cmd == "recall":
        names = _read_list(args.list, _)
        if not args.dry_run:
            confirm_cli.confirm(args, f"recall-{len(names)}")
    if cmd == "enrol-batch" and not 1 <= args.workers <= 16:
        raise ClientError(_("--workers must be between 1 and 16"))
    endpoint, creds = resolve(args, _)

    def connect() -> TerminalClient:
        return TerminalClient(endpoint, creds, lang=lang)

    if cmd == "enrol-batch":
        return _enrol_batch(args, connect, _)
    with connect() as client:
        if cmd == "find":
            doc = client.search(_query(args, ("device_id", "subject_contains", "serial")))
            if args.json:
                print(json.dumps(doc["items"], indent=2))
            else:
                _print_items(doc["items"], _)
            return 0 if doc["items"] else 1
        if cmd == "list":
            query = _query(args, tuple(n for n, _t in _FILTERS) + ("limit", "cursor"))
            while True:
                doc = client.search(query)
                if args.json:
                    print(json.dumps(doc, indent=2))
                else:
                    _print_items(doc["items"], _)
                if not (args.all and doc["next_cursor"]):
                    break
                query["cursor"] = doc["next_cursor"]
            if doc["next_cursor"] and not args.json:
                print(_("more: --cursor {cursor}").format(cursor=doc["next_cursor"]), file=sys.stderr)
            return 0
        if cmd in ("revoke", "recall"):
            by = "device_id" if cmd == "revoke" else RECALL_BY[args.by]
            targets = [args.device_id] if cmd == "revoke" else names
            doc = client.recall(by, targets, args.reason, dry_run=getattr(args, "dry_run", False))
            _print_recall(doc, _)
            return 0
        if cmd == "export":
            query = {**_query(args, tuple(n for n, _t in _FILTERS)), "format": args.format}
            out = args.out.open("wb") if args.out else sys.stdout.buffer
            try:
                for chunk in client.export(query):
                    out.write(chunk)
            finally:
                if args.out:
                    out.close()
                else:
                    out.flush()
            return 0
    raise ClientError(_("unknown terminal command {cmd}").format(cmd=cmd))


def _enrol_batch(
    args: argparse.Namespace, connect: Callable[[], TerminalClient], _: Callable[[str], str]
) -> int:
    items = batch.read_items(args.source, args.out, _)
    if not items:
        raise ClientError(_("{source}: no *.csr or *.pem requests found").format(source=args.source))

    def label(s: batch.Summary) -> str:
        return _("issued {issued}, skipped {skipped}, failed {failed}").format(
            issued=s.issued, skipped=s.skipped, failed=len(s.failed)
        )

    progress = batch.Progress(sys.stderr, len(items), label)
    summary = batch.enrol_batch(
        items, args.out, connect, workers=args.workers, profile=args.profile, progress=progress, _=_
    )
    print(
        _("{total} requests: issued {issued}, skipped {skipped} (done before), failed {failed}").format(
            total=summary.total, issued=summary.issued, skipped=summary.skipped, failed=len(summary.failed)
        )
    )
    for name, reason in sorted(summary.failed)[:20]:
        print(_("failed: {name}: {reason}").format(name=name, reason=reason))
    if len(summary.failed) > 20:
        print(_("… all failures in {path}").format(path=args.out / batch.FAILED))
    return 1 if summary.failed else 0
