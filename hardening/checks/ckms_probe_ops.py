"""Read-only probe of the CA's entities and role grants, run *on the CA host* with the daemon's code.

Not a test module: ``ckms_checks.probe(host, "entities", script="ckms_probe_ops.py")`` sends this file
to the host and runs it with the CA's venv python as the CA service user (``CKMS_HOME`` set). It reads
the database the daemon uses (its configured URL) and writes nothing; no credential is needed.

    python ckms_probe_ops.py entities            # every entity: status, role label and its role grants
    python ckms_probe_ops.py trail-count SINCE   # audit trail records since SINCE (UTC, ISO) per outcome
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_entities(args) -> dict:
    from sqlalchemy import select

    from ckms_app.config import load_config
    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import entities, entity_roles

    config = load_config(Path(os.environ["CKMS_HOME"]))
    out: dict[str, dict] = {}
    with open_engine(config.database_url).connect() as conn:
        for r in conn.execute(select(entities.c.entity_id, entities.c.role, entities.c.status)).mappings():
            out[r["entity_id"]] = {"status": r["status"], "role_label": r["role"], "grants": []}
        for r in conn.execute(select(entity_roles.c.entity_id, entity_roles.c.role)).mappings():
            out.setdefault(r["entity_id"], {"status": "no entity row", "role_label": None, "grants": []})
            out[r["entity_id"]]["grants"].append(r["role"])
    for e in out.values():
        e["grants"].sort()
    return {"entities": out}


def cmd_trail_count(args) -> dict:
    import datetime as dt

    from sqlalchemy import func, select

    from ckms_app.config import load_config
    from ckms_app.store.engine import open_engine
    from ckms_app.store.schema import audit_events

    since = dt.datetime.fromisoformat(args.since).replace(tzinfo=dt.UTC)
    config = load_config(Path(os.environ["CKMS_HOME"]))
    q = (
        select(audit_events.c.outcome, func.count())
        .where(audit_events.c.at >= since)
        .group_by(audit_events.c.outcome)
    )
    with open_engine(config.database_url).connect() as conn:
        by = {outcome: n for outcome, n in conn.execute(q)}
    return {"since": args.since, "total": sum(by.values()), "by_outcome": by}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("entities")
    tc = sub.add_parser("trail-count")
    tc.add_argument("since")
    args = ap.parse_args(argv)
    fn = {"entities": cmd_entities, "trail-count": cmd_trail_count}[args.cmd]
    print(json.dumps(fn(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
