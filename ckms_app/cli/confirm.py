"""Explicit confirmation of destructive commands (A.49): ``ckms revoke`` and ``ckms hsm destroy-key``.

Neither can be undone, so neither acts on a bare command line: the person either adds ``--yes`` (scripts,
after reading what they wrote) or, at a terminal, types the serial or key label back. Without a terminal
and without ``--yes`` the command stops before it reads any credential, connects anywhere or opens the
token, and nothing is recorded because nothing was attempted.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ckms_app.errors import ClientError
from ckms_app.i18n import resolve_language, translator


def add_yes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--yes",
        action="store_true",
        help="confirm this irreversible action without a prompt (otherwise type the target back at a terminal)",
    )


def confirm(
    args: argparse.Namespace,
    target: str,
    *,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Return when the person confirmed acting on ``target``; else raise ClientError (nothing done)."""
    if getattr(args, "yes", False):
        return
    _ = translator(resolve_language(getattr(args, "lang", None)))
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    if not stdin.isatty():
        raise ClientError(
            _("{target}: cannot be undone: confirm with --yes, or type it back at a terminal").format(
                target=target
            )
        )
    stderr.write(_("this cannot be undone: type {target} to go on: ").format(target=target))
    stderr.flush()
    if stdin.readline().strip() != target:
        raise ClientError(_("{target}: not confirmed: nothing was done").format(target=target))
