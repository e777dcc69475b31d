"""Audit records written by local CLI commands (HSM custody, self-tests) straight into the trail.

These commands run on the CA host as the service user, without the daemon; each attempt, refused or
not, is recorded with who took part (custodians, the local account)."""

from __future__ import annotations

from typing import Any

from ckms_app.audit.record import named, record_now
from ckms_app.config import Config
from ckms_app.store.engine import open_engine
from ckms_app.store.writer import GroupCommitWriter


def audit_local(
    config: Config, *, entity: str, role: str, action: str, target: str, outcome: str, detail: dict[str, Any]
) -> None:
    if not config.database_url.startswith("sqlite") or (config.home / "db").exists():
        writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
        try:
            record_now(writer, named(entity, role), action, target, outcome, detail)
        finally:
            writer.close()
