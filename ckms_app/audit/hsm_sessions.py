"""The CA's own PKCS#11 sessions on the CA token, on the audit trail (F.08, A.31).

The token keeps no event log of its own (SoftHSM has none; a vendor HSM's is out of ckms's reach), so
ckms records each session it opens and closes: ``hsm.session.open`` / ``hsm.session.close`` with the OS
account and process that hold it, the token and slot, and why it was opened (``serve`` for a daemon
worker, ``selftest``, ``custody``, ``ceremony``). Together with the HSM event log of interactive tools
(the audit role's pkcs11-spy shim) every login to the token is attributable to a person or to the
service. Sessions are opened once per process, so none of this is on the per-certificate path.
The hsm layer may not write audit records; callers that open a :class:`~ckms_app.hsm.token.Token`
record through this module.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from ckms_app.audit.record import SYSTEM, Actor, record, record_now, refusal
from ckms_app.config import TokenConfig
from ckms_app.errors import HsmError
from ckms_app.hsm.token import Token
from ckms_app.store.writer import GroupCommitWriter

OPEN = "hsm.session.open"
CLOSE = "hsm.session.close"


def os_user() -> str:
    """The name of the process's real user (its uid when the account has no name)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def session_detail(token: Token, purpose: str) -> dict[str, Any]:
    """What a session record says: who holds the session, on which token and slot, and why."""
    return {
        "os_user": os_user(),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "token_label": token.config.token_label,
        "slot": token.slot_id,
        "module": str(token.config.module),
        "purpose": purpose,
    }


def failed_open_detail(config: TokenConfig, purpose: str, exc: HsmError) -> dict[str, Any]:
    """A refused login (wrong PIN, locked or missing token): who tried, on which token, and why it failed."""
    return {
        "os_user": os_user(),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "token_label": config.token_label,
        "module": str(config.module),
        "purpose": purpose,
        **refusal(exc),
    }


def target_of(detail: dict[str, Any]) -> str:
    return f"token:{detail['token_label']}"


async def record_session(
    writer: GroupCommitWriter,
    action: str,
    detail: dict[str, Any],
    who: Actor = SYSTEM,
    outcome: str = "success",
) -> None:
    """Record an open or close from the daemon (``action`` is :data:`OPEN` or :data:`CLOSE`)."""
    await record(writer, who, action, target_of(detail), outcome, detail)


def record_session_now(
    writer: GroupCommitWriter, action: str, detail: dict[str, Any], who: Actor = SYSTEM
) -> None:
    """Record an open or close from synchronous code (the ``ckms`` CLI)."""
    record_now(writer, who, action, target_of(detail), "success", detail)
