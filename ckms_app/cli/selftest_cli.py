"""``ckms selftest`` and ``ckms ca recover``: run the self-tests locally, enter or leave the error state."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from cryptography import x509

from ckms_app.authority import selftest
from ckms_app.authority.guard import ServiceState
from ckms_app.cli.local_audit import audit_local
from ckms_app.config import Config
from ckms_app.errors import HsmError
from ckms_app.hsm.token import Token
from ckms_app.i18n import translator


def _open_key(config: Config) -> tuple[Any, Any, Any]:
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    try:
        token = Token(config.token)
        return token, token.load_ec_key(config.ca_key_label), ca_cert
    except HsmError:
        return None, None, ca_cert


def run_selftest(config: Config, args: argparse.Namespace) -> int:
    token, key, ca_cert = _open_key(config)
    try:
        if args.record:
            if key is None:
                raise HsmError("recording a manifest needs the CA key in the token (it signs the manifest)")
            path = selftest.record_manifest(config, key, recorded_by=getpass.getuser())
            audit_local(
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
    audit_local(
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
        _ = translator(args.lang)
        for c in report.checks:  # the checks' own details stay English (they are also audited)
            status = _("ok") if c.ok else _("FAIL")
            print(f"{status:4} {c.name}: {c.detail}")
        if state.in_error:
            print(_("error state: {reason}").format(reason=state.reason))
    return 0 if report.ok else 1


def run_recover(config: Config, args: argparse.Namespace) -> int:
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
    audit_local(
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
        _ = translator(args.lang)
        print(
            _("recovered: the CA serves again")
            if report.ok
            else _("still in the error state: {reason}").format(reason=report.reason())
        )
    return 0 if report.ok else 1
