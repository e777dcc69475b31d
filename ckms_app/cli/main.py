"""``ckms``: one command for the CA home — init, serve, the operator client and CRL tools.

Every subcommand takes ``--home DIR`` (default ``$CKMS_HOME``). Errors print one line that says
what went wrong and exit non-zero; no traceback for expected failures.

Messages and errors are English unless ``--lang ja`` (anywhere on the command line) or the locale
(``LC_ALL``, ``LC_MESSAGES``, ``LANG`` = ``ja…``) asks for Japanese (:mod:`ckms_app.i18n`); the daemon is
asked for the same language; so are ``--help``, usage and usage errors (:mod:`ckms_app.cli.help_i18n`).
``--json`` output is never translated: its keys and codes are for programs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.authority import ca_bundle, ceremony, credentials
from ckms_app.authority.ceremony_people import InitPeople, parse_person
from ckms_app.cli import admin as admin_cli
from ckms_app.cli import confirm as confirm_cli
from ckms_app.cli import expiry_cli, help_i18n, hub_cli, rollover_cli
from ckms_app.cli import hsm as custody_cli
from ckms_app.cli import report_cli as reporting_cli
from ckms_app.cli import terminal as terminal_cli
from ckms_app.cli.client import CkmsClient, Credentials, fetch_crl
from ckms_app.config import Config, load_config, resolve_home
from ckms_app.daemon import supervisor
from ckms_app.errors import CkmsError, ClientError, LintUnavailable
from ckms_app.hsm.token import DEFAULT_SOFTHSM_MODULE
from ckms_app.i18n import LANGUAGES, localise_error, resolve_language, translator


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="CA home directory (default: $CKMS_HOME)")


def _add_identity(p: argparse.ArgumentParser, default_role: str) -> None:
    p.add_argument(
        "--role",
        default=default_role,
        help="use this role's credentials from the home (default %(default)s)",
    )
    p.add_argument("--cert", type=Path, help="client certificate (PEM) instead of the role's")
    p.add_argument("--key", type=Path, help="client private key (PEM) instead of the role's")


def _add_people(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--demo",
        action="store_true",
        help="also create one demo identity per role with key, certificate and password in the home (labs only)",
    )
    p.add_argument(
        "--person",
        dest="persons",
        action="append",
        default=[],
        type=_person,
        metavar="ID:ROLE",
        help="register a person (no key; a one-time enrolment code in the --json summary); repeatable",
    )


def _person(value: str) -> tuple[str, str]:
    try:
        return parse_person(value)
    except CkmsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _people(args: argparse.Namespace) -> InitPeople:
    return InitPeople(demo=args.demo, persons=tuple(args.persons))


def _add_lang(parser: argparse.ArgumentParser) -> None:
    """``--lang`` on the top parser and on every subcommand, so it may stand before or after the command.

    The subcommands' copies default to "not given" (SUPPRESS), so they never undo a ``--lang`` given earlier.
    """
    parser.add_argument(
        "--lang",
        choices=LANGUAGES,
        default=None,
        help="language of messages and errors (default: from LC_ALL/LC_MESSAGES/LANG, else en)",
    )
    pending = [parser]
    while pending:
        for action in pending.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    child.add_argument(
                        "--lang", choices=LANGUAGES, default=argparse.SUPPRESS, help="as ckms --lang"
                    )
                    pending.append(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckms", description="ckms private CA")
    sub = parser.add_subparsers(dest="command", required=True)

    ca = sub.add_parser("ca", help="set up and run the CA").add_subparsers(dest="ca_command", required=True)
    init = ca.add_parser("init", help="create a complete CA in an empty home directory")
    _add_home(init)
    init.add_argument(
        "--curve",
        default="P-256",
        choices=["P-256", "P-384"],
        help="curve of the CA key (default %(default)s)",
    )
    init.add_argument("--ca-name", default="ckms Private CA", help="CN of the CA certificate")
    init.add_argument(
        "--ca-validity-days",
        type=int,
        default=3650,
        help="validity of the CA certificate in days (default %(default)s)",
    )
    init.add_argument(
        "--pkcs11-module", default=None, help="PKCS#11 module (default: SoftHSM2, token created in the home)"
    )
    init.add_argument(
        "--token-label", default="ckms-ca", help="label of the PKCS#11 token (default %(default)s)"
    )
    init.add_argument(
        "--pin-file", type=Path, help="0600 file with the user PIN of an existing (vendor) token"
    )
    init.add_argument(
        "--listen", default="127.0.0.1", help="address the daemon listens on (default %(default)s)"
    )
    init.add_argument("--public-host", default=None, help="name/address clients use (default: --listen)")
    init.add_argument(
        "--est-port",
        type=int,
        default=8443,
        help="port of EST and the API over mutual TLS (default %(default)s)",
    )
    init.add_argument(
        "--crl-port", type=int, default=8080, help="port of the CRLs over HTTP (default %(default)s)"
    )
    init.add_argument(
        "--csr-out", type=Path, help="write a CA CSR for an external root instead of self-signing"
    )
    init.add_argument(
        "--policy-oid", help="certificate policy OID of your CP/CPS (A.05); default: a random example-arc OID"
    )
    init.add_argument(
        "--database-url", help="SQLAlchemy URL (default: SQLite in the home), e.g. postgresql+psycopg://…"
    )
    init.add_argument("--no-lint", action="store_true", help="disable pre-issuance linting (not recommended)")
    init.add_argument(
        "--clock-source",
        choices=["chrony", "none"],
        help="clock gate for signing (A.33); default: chrony if chronyc is installed, else none",
    )
    _add_people(init)
    init.add_argument("--json", action="store_true", help="print a JSON summary")
    imp = ca.add_parser("import-cert", help="finish a CA whose certificate an external root signed")
    _add_home(imp)
    imp.add_argument(
        "--cert", type=Path, required=True, help="the CA certificate (PEM) the external root signed"
    )
    imp.add_argument("--chain", type=Path, help="PEM chain up to the external root")
    _add_people(imp)
    imp.add_argument("--json", action="store_true", help="print a JSON summary")
    serve = ca.add_parser("serve", help="run the daemon (EST + API over mTLS, CRLs over HTTP)")
    _add_home(serve)
    renew_tls = ca.add_parser(
        "renew-tls", help="new key and certificate for the daemon's TLS listener (next start)"
    )
    _add_home(renew_tls)
    renew_tls.add_argument("--json", action="store_true", help="print a JSON summary")
    trust = ca.add_parser(
        "trust", help="every key generation's CA certificate (PEM): what relying parties trust"
    )
    _add_home(trust)
    trust.add_argument("--json", action="store_true", help="also the CRL address of each signing key")

    issue = sub.add_parser("issue", help="enrol a PKCS#10 request over EST")
    _add_home(issue)
    _add_identity(issue, "operator")
    issue.add_argument("--csr", type=Path, required=True, help="PKCS#10 request, PEM or DER")
    issue.add_argument("--out", type=Path, required=True, help="where to write the certificate (PEM)")
    issue.add_argument("--profile", help="certificate profile (EST label); default: the CA's default")
    issue.add_argument(
        "--renew", action="store_true", help="use simplereenroll (same subject as a valid certificate)"
    )

    revoke = sub.add_parser("revoke", help="revoke a certificate by serial")
    _add_home(revoke)
    _add_identity(revoke, "operator")
    revoke.add_argument("--serial", required=True, help="hex serial, as openssl prints it")
    revoke.add_argument("--reason", default="unspecified", help="RFC 5280 reason name or code")
    confirm_cli.add_yes(revoke)

    cert = sub.add_parser("cert", help="certificate lookups").add_subparsers(
        dest="cert_command", required=True
    )
    show = cert.add_parser("show", help="show a certificate's record and status")
    _add_home(show)
    _add_identity(show, "operator")
    show.add_argument("--serial", required=True, help="hex serial, as openssl prints it")

    crl = sub.add_parser("crl", help="CRL tools").add_subparsers(dest="crl_command", required=True)
    fetch = crl.add_parser("fetch", help="download the current CRL")
    _add_home(fetch)
    fetch.add_argument(
        "--which", choices=["full", "delta", "base"], default="full", help="which CRL (default %(default)s)"
    )
    fetch.add_argument("--out", type=Path, required=True, help="where to write the CRL")
    fetch.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    publish = crl.add_parser("publish", help="publish new full and delta CRLs now")
    _add_home(publish)
    _add_identity(publish, "operator")

    admin_cli.add_parsers(sub)  # entity, acl, change, audit
    reporting_cli.add_parsers(sub)  # report manifest/sign/verify, attest (issue 18)
    terminal_cli.add_parsers(sub)  # terminal enrol-batch, find, list, revoke, recall, export

    expiry_cli.add_parsers(sub)  # expiry check (issue 14 part 5)
    hub_cli.add_parsers(sub)  # hub init/serve/relay/connect (issue 14 part 1)
    custody_cli.add_parsers(sub, ca)  # hsm ..., selftest, ca recover
    rollover_cli.add_parsers(ca)  # ca rollover begin/import-cert/activate/status (issue 14 part 3)
    _add_lang(parser)
    return parser


def _creds(args: argparse.Namespace, config: Config, _: Callable[[str], str]) -> Credentials:
    if args.cert or args.key:
        if not (args.cert and args.key):
            raise ClientError(_("--cert and --key go together"))
        return Credentials(args.cert, args.key)
    return Credentials.for_role(config, args.role, _)


def _read_csr(path: Path, _: Callable[[str], str]) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_csr(data).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            raise ClientError(
                _("{path}: not a PEM certificate request: {reason}").format(path=path, reason=exc)
            ) from None
    return data


def run(args: argparse.Namespace) -> int:
    lang = resolve_language(getattr(args, "lang", None))
    _ = translator(lang)
    if args.command == terminal_cli.COMMAND:  # no CA home needed on the terminal
        return terminal_cli.run(args)
    if args.command in reporting_cli.COMMANDS:  # report verify/manifest need no CA home
        return reporting_cli.run(args)
    if args.command == hub_cli.COMMAND:  # the hub and the relay run away from the CA home
        return hub_cli.run(args)
    home = resolve_home(args.home)
    if args.command == expiry_cli.COMMAND:
        return expiry_cli.run(args)
    if args.command in ("hsm", "selftest") or (args.command == "ca" and args.ca_command == "recover"):
        return custody_cli.run(args, home)
    if args.command == "ca" and args.ca_command == rollover_cli.COMMAND:
        return rollover_cli.run(args, home)
    if args.command == "ca":
        if args.ca_command == "init":
            summary = ceremony.init_ca(
                home,
                ceremony.InitOptions(
                    curve=args.curve,
                    ca_name=args.ca_name,
                    ca_validity_days=args.ca_validity_days,
                    module=args.pkcs11_module or DEFAULT_SOFTHSM_MODULE,
                    token_label=args.token_label,
                    pin_file=args.pin_file,
                    listen=args.listen,
                    public_host=args.public_host or args.listen,
                    est_port=args.est_port,
                    crl_port=args.crl_port,
                    csr_out=args.csr_out,
                    lint=not args.no_lint,
                    policy_oid=args.policy_oid,
                    database_url=args.database_url,
                    clock_source=args.clock_source,
                    people=_people(args),
                ),
            )
            _print_summary(summary, args.json, _)
            return 0
        if args.ca_command == "import-cert":
            _print_summary(
                ceremony.import_ca_certificate(home, args.cert, args.chain, _people(args)), args.json, _
            )
            return 0
        if args.ca_command == "renew-tls":
            _print_summary(credentials.renew_tls(home), args.json, _)
            return 0
        if args.ca_command == "trust":
            summary = ca_bundle.trust_summary(load_config(home))
            print(json.dumps(summary, indent=2) + "\n" if args.json else str(summary["bundle"]), end="")
            return 0

        supervisor.run(home)
        return 0

    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args, home)
    if args.command == "revoke":  # irreversible: confirmed before any credential or connection (A.49)
        confirm_cli.confirm(args, args.serial)
    config = load_config(home)
    if args.command == "crl" and args.crl_command == "fetch":
        der = fetch_crl(config, args.which)
        if args.pem:
            crl_obj = x509.load_der_x509_crl(der)
            args.out.write_bytes(crl_obj.public_bytes(serialization.Encoding.PEM))
        else:
            args.out.write_bytes(der)
        print(_("wrote {which} CRL to {out}").format(which=args.which, out=args.out))
        return 0
    with CkmsClient(config, _creds(args, config, _), lang=lang) as client:
        if args.command == "issue":
            cert = client.enroll(_read_csr(args.csr, _), renew=args.renew, label=args.profile)
            args.out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            print(
                _("issued serial {serial} for {subject} -> {out}").format(
                    serial=f"{cert.serial_number:x}", subject=cert.subject.rfc4514_string(), out=args.out
                )
            )
        elif args.command == "revoke":
            done = client.revoke(args.serial, args.reason)
            print(
                _(
                    "revoked {serial} ({reason}); in the published CRL within {seconds} s "
                    "(force with 'ckms crl publish')"
                ).format(serial=done["serial"], reason=done["reason"], seconds=done["crl_within_seconds"])
            )
        elif args.command == "cert":
            print(json.dumps(client.certificate(args.serial), indent=2))
        elif args.command == "crl":
            print(json.dumps(client.publish_crl(), indent=2))
    return 0


def _print_summary(summary: Mapping[str, Any], as_json: bool, _: Callable[[str], str]) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "credentials":
            for role, paths in value.items():
                print(f"credentials.{role}: {paths['cert']} / {paths['key']}")
        elif key == "enrolment_codes":
            for entity_id, code in value.items():
                print(
                    _("enrolment code of {entity}: {code} (expires {expires})").format(
                        entity=entity_id, code=code["code"], expires=code["expires"]
                    )
                )
        else:
            print(f"{key}: {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with its help, usage and usage errors in the language asked for."""
    argv = sys.argv[1:] if argv is None else argv
    lang = resolve_language(help_i18n.lang_asked(argv))
    with help_i18n.argparse_language(lang):
        parser = build_parser()
        help_i18n.translate_parser(parser, lang)
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lang = resolve_language(args.lang)
    _ = translator(lang)
    try:
        return run(args)
    except (CkmsError, LintUnavailable) as exc:
        message = localise_error(exc.code, str(exc), lang)
        print(_("ckms: error: {message}").format(message=message), file=sys.stderr)
        return 1
    except ClientError as exc:  # already in the person's language (and the daemon's words in it)
        print(_("ckms: error: {message}").format(message=exc), file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        message = _("{path}: no such file").format(path=exc.filename)
        print(_("ckms: error: {message}").format(message=message), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
