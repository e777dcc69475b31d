"""``ckms report …`` (signed report bundles) and ``ckms attest …`` (attested procedures), issue 18.

``report manifest`` and ``report verify`` need no CA home: the first lists a bundle on the machine that
built it, the second is the reviewer's check with only public material. ``report sign``, ``attest ITEM``
and ``attest list`` run on the CA host against its home, as an authenticated person (``--as`` or
``--cert`` and their own password, as for ``ckms entity``). ``attest template`` needs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckms_app.authority.admin_session import AdminSession
from ckms_app.cli.admin import read_secret
from ckms_app.config import load_config, resolve_home
from ckms_app.errors import ClientError
from ckms_app.i18n import resolve_language, translator
from ckms_app.reporting import attestations, signing
from ckms_app.reporting import bundle as rb
from ckms_app.reporting.procedures import procedural_item, procedural_items, template

COMMANDS = ("report", "attest")


def _add_actor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")
    p.add_argument("--as", dest="as_entity", metavar="ENTITY", help="your entity ID")
    p.add_argument("--cert", type=Path, help="your client certificate (PEM), identifying you instead of --as")
    p.add_argument(
        "--password-file",
        type=Path,
        help="0600 file holding your password, or - to read one line from stdin (default: prompt)",
    )


def add_parsers(sub: Any) -> None:
    report = sub.add_parser("report", help="signed report bundles").add_subparsers(
        dest="report_command", required=True
    )
    manifest = report.add_parser(
        "manifest", help="write the unsigned manifest of a bundle (where the report was built; no CA home)"
    )
    manifest.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    manifest.add_argument("--out", type=Path, help="where to write it (default: BUNDLE_DIR/manifest.json)")
    sign = report.add_parser(
        "sign", help="sign a bundle (or a manifest) with the HSM audit key and record it (on the CA host)"
    )
    _add_actor(sign)
    sign.add_argument("bundle", type=Path, nargs="?", metavar="BUNDLE_DIR", help="the bundle to sign")
    sign.add_argument(
        "--manifest", type=Path, help="sign this manifest (from 'ckms report manifest') instead of a bundle"
    )
    sign.add_argument("--out", type=Path, help="with --manifest: directory for the signed files")
    sign.add_argument("--json", action="store_true")
    verify = report.add_parser("verify", help="check a signed bundle with only public material")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    anchor = verify.add_mutually_exclusive_group(required=True)
    anchor.add_argument("--audit-key", type=Path, metavar="PEM", help="the CA's audit public key")
    anchor.add_argument(
        "--ca-cert", type=Path, metavar="PEM", help="the CA certificate (certifies the bundle's audit key)"
    )
    verify.add_argument("--json", action="store_true")

    attest = sub.add_parser(
        "attest",
        help="attested procedures: 'attest ITEM --evidence FILE', 'attest list', 'attest template ITEM'",
    )
    _add_actor(attest)
    attest.add_argument("what", metavar="ITEM|list|template", help="a procedural item, 'list' or 'template'")
    attest.add_argument("item", nargs="?", metavar="ITEM", help="with 'template': the item (or 'all')")
    attest.add_argument("--evidence", type=Path, help="the evidence file (stored with the audit data)")
    attest.add_argument("--note", default="", help="a short note for the record")
    attest.add_argument("--out", type=Path, help="with 'template': write here instead of stdout")
    attest.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    _ = translator(getattr(args, "lang", None))
    if args.command == "report":
        if args.report_command == "manifest":
            return _manifest(args, _)
        if args.report_command == "verify":
            return _verify(args, _)
        return _sign(args, _)
    if args.what == "template":
        return _template(args, _)
    if args.what == "list":
        with _session(args, attestations.LIST_OPERATION) as session:
            listed = attestations.list_attestations(session.reader)
        if args.json:
            print(json.dumps(listed, indent=2, sort_keys=True, ensure_ascii=False))
        else:
            for item, entries in sorted(listed.items()):
                for e in entries:
                    print(
                        _("{item}: {person} at {at}, evidence {name} ({sha}…), audit record {seq}").format(
                            item=item,
                            person=e["person"],
                            at=e["at"],
                            name=e["evidence_name"],
                            sha=e["evidence_sha256"][:16],
                            seq=e["audit_seq"],
                        )
                    )
        return 0
    if args.item is not None:
        raise ClientError(_("ckms attest ITEM takes one item; did you mean 'ckms attest template ITEM'?"))
    if args.evidence is None:
        raise ClientError(_("ckms attest ITEM needs --evidence FILE"))
    procedural_item(args.what)  # an unknown item is refused before anyone is asked for a password
    with _session(args, None) as session:
        done = attestations.attest(session, args.what, args.evidence, args.note)
    if args.json:
        print(json.dumps(done, indent=2, ensure_ascii=False))
    else:
        print(
            _("attested {item} by {person}: evidence {name} sha256 {sha}, audit record {seq}").format(
                item=done["item"],
                person=done["person"],
                name=done["evidence_name"],
                sha=done["evidence_sha256"],
                seq=done["audit_seq"],
            )
        )
    return 0


def _session(args: argparse.Namespace, operation: str | None) -> AdminSession:
    """The CA home opened and the person authenticated (credential + own password, then the ACL)."""
    config = load_config(resolve_home(args.home))
    session = AdminSession.open(config)
    try:
        session.authenticate(
            entity_id=args.as_entity,
            cert_path=args.cert,
            password=read_secret(args.password_file, "your password: "),
            operation=operation,
        )
    except BaseException:
        session.close()
        raise
    return session


def _manifest(args: argparse.Namespace, _: Callable[[str], str]) -> int:
    manifest = rb.draft_manifest(args.bundle)
    out = args.out or args.bundle / rb.MANIFEST
    out.write_bytes(rb.manifest_bytes(manifest))
    print(_("wrote the manifest of {files} files to {out}").format(files=len(manifest["files"]), out=out))
    return 0


def _sign(args: argparse.Namespace, _: Callable[[str], str]) -> int:
    if (args.bundle is None) == (args.manifest is None):
        raise ClientError(_("give a BUNDLE_DIR or --manifest FILE --out DIR"))
    if args.manifest is not None and args.out is None:
        raise ClientError(_("--manifest needs --out DIR for the signed files"))
    if args.bundle is not None and args.out is not None:
        raise ClientError(_("--out goes with --manifest; a bundle is signed in place"))
    with _session(args, signing.SIGN_OPERATION) as session:
        if args.manifest is not None:
            manifest = rb.load_manifest(args.manifest.read_bytes(), str(args.manifest))
            done = signing.sign_manifest(session, manifest, args.out)
        else:
            done = signing.sign_bundle_dir(session, args.bundle)
    if args.json:
        print(json.dumps(done.as_dict(), indent=2))
    else:
        print(
            _(
                "signed {files} files (manifest sha256 {sha}) into {out}; audit record {seq}, sealed up to {sealed}"
            ).format(
                files=done.files,
                sha=done.manifest_sha256,
                out=done.out_dir,
                seq=done.audit_seq,
                sealed=done.sealed_up_to,
            )
        )
    return 0


def _verify(args: argparse.Namespace, _: Callable[[str], str]) -> int:
    if args.audit_key is not None:
        report = rb.verify_bundle(
            args.bundle, audit_key=rb.load_ec_public_key(args.audit_key.read_bytes(), str(args.audit_key))
        )
    else:
        report = rb.verify_bundle(
            args.bundle, ca_cert=rb.load_certificate(args.ca_cert.read_bytes(), str(args.ca_cert))
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    elif report.ok:
        print(
            _(
                "report bundle OK: {files} files, manifest sha256 {sha}, run {run}, signed by {who} at {at} "
                "with {anchor}; audit record {seq} sealed up to {sealed}"
            ).format(
                files=report.files,
                sha=report.manifest_sha256,
                run=report.run_id or "-",
                who=report.signed_by,
                at=report.signed_at,
                anchor=report.anchor,
                seq=report.record_seq,
                sealed=report.sealed_up_to,
            )
        )
    else:
        print(_("report bundle FAILED verification ({count} problems):").format(count=len(report.problems)))
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.ok else 2


def _template(args: argparse.Namespace, _: Callable[[str], str]) -> int:
    if args.item is None:
        raise ClientError(_("ckms attest template ITEM: name a procedural item, or 'all'"))
    lang = resolve_language(getattr(args, "lang", None))
    items = list(procedural_items().values()) if args.item.lower() == "all" else [procedural_item(args.item)]
    text = "\n".join(template(item, lang) for item in items)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(_("wrote {count} templates to {out}").format(count=len(items), out=args.out))
    else:
        sys.stdout.write(text)
    return 0
