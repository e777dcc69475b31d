"""The seals' copy outside the database: the anchor that shows a cut tail (A.06, F.12–F.14).

The hash chain and the HSM-signed seals show any edit, deletion, insertion or reordering *inside*
the trail. They cannot show, on their own, that someone with write access to the database removed the
newest records together with the newest seals and moved the chain head back: what is left is a
consistent, shorter trail. So every seal is also appended, as one JSON line, to a log outside the
database (``[audit] seal_log``, opened for append only and synced) and sent to syslog, where the
host's log shipping takes it off the CA host. ``ckms audit verify`` then requires the newest seal
of that log to be in the database, and the newest seal to be recent (a sealer that stopped, or a cut
that took the log with it, shows as a stale seal).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import logging.handlers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckms_app.errors import ExportError

log = logging.getLogger("ckms.audit")
_SYSLOG = "/dev/log"


def seal_line(seal: Mapping[str, Any]) -> str:
    """One seal as a canonical JSON line (the fields its signature covers, plus the key label)."""
    sealed_at = seal["sealed_at"]
    if isinstance(sealed_at, dt.datetime):
        sealed_at = sealed_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    signature = seal["signature"]
    if isinstance(signature, bytes | bytearray | memoryview):
        signature = base64.b64encode(bytes(signature)).decode()
    return json.dumps(
        {
            "type": "seal",
            "up_to_seq": int(seal["up_to_seq"]),
            "chain_hash": seal["chain_hash"],
            "sealed_at": sealed_at,
            "key_label": seal["key_label"],
            "signature": signature,
        },
        sort_keys=True,
    )


def append(path: Path, seal: Mapping[str, Any], *, to_syslog: bool = True) -> None:
    """Append one committed seal to the log (created 0600) and, when there is a socket, to syslog."""
    line = seal_line(seal)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if to_syslog and Path(_SYSLOG).exists():
        _to_syslog(line)


def _to_syslog(line: str) -> None:
    try:
        handler = logging.handlers.SysLogHandler(
            address=_SYSLOG, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
        )
    except OSError as exc:
        log.warning("audit seal not sent to syslog: %s", exc)
        return
    try:
        handler.ident = "ckms-audit-seal: "
        handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
    finally:
        handler.close()


def read(path: Path) -> list[dict[str, Any]]:
    """Every seal in the log, in file order, signatures decoded; a line that is not a seal is an error."""
    seals = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if item.get("type") != "seal":
                raise ValueError("not a seal")
            seals.append(
                {
                    "up_to_seq": int(item["up_to_seq"]),
                    "chain_hash": str(item["chain_hash"]),
                    "sealed_at": str(item["sealed_at"]),
                    "key_label": str(item["key_label"]),
                    "signature": base64.b64decode(item["signature"]),
                }
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(
                f"{path} line {number} is not a seal record ({exc}): the seal log was edited"
            ) from None
    return seals
