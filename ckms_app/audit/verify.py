"""Verification and export of the audit trail (A.06, F.12–F.14).

:func:`verify_trail` recomputes the hash chain and checks every seal's signature; it names the first
record that was edited, deleted, inserted or reordered. The auditor's export (JSON lines with the
seals and the audit public key) is verified by the same code, so an export can be checked away
from the CA.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256, SHA384
from sqlalchemy import select
from sqlalchemy.engine import Engine

from ckms_app.algorithms import curve_of
from ckms_app.audit.seals import EXPORT_FORMAT, _iso, seal_message
from ckms_app.errors import ExportError
from ckms_app.store.chain import AUDIT_FIELDS, GENESIS_HASH, audit_record_hash
from ckms_app.store.schema import audit_chain_head, audit_events, audit_seals


# --- verification -------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    seals: int
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None
    unsealed_records: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _record_dict(row: Any) -> dict[str, Any]:
    record = {name: row[name] for name in AUDIT_FIELDS}
    record["at"] = _iso(record["at"]) if isinstance(record["at"], dt.datetime) else record["at"]
    record["chain_hash"] = row["chain_hash"]
    return record


def verify_trail(
    records: Iterable[dict[str, Any]],
    seals: Iterable[dict[str, Any]],
    public_key: ec.EllipticCurvePublicKey | None,
    head: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check the chain record by record, then every seal; report the first record that breaks.

    ``records`` must come in stored order (seq order for the database, file order for an export);
    ``head`` is the database's chain head, if there is one, to catch a removed tail.
    """
    seals = list(seals)
    prev, expected, count = GENESIS_HASH, 1, 0
    hashes: dict[int, str] = {}
    seal_events: dict[int, int] = {}  # sealed-up-to seq -> seq of the audit.seal record
    for record in records:
        count += 1
        seq = record.get("seq")
        if seq != expected:
            what = (
                "missing (deleted)" if isinstance(seq, int) and seq > expected else "out of order or inserted"
            )
            return VerifyReport(
                False,
                count,
                0,
                expected - 1,
                expected
                if isinstance(seq, int) and seq > expected
                else (seq if isinstance(seq, int) else expected),
                f"expected record seq {expected}, found seq {seq}: record {expected} is {what}",
            )
        try:
            computed = audit_record_hash(prev, record)
        except (KeyError, TypeError, ValueError) as exc:
            return VerifyReport(False, count, 0, seq - 1, seq, f"record {seq} is malformed: {exc}")
        if computed != record.get("chain_hash"):
            return VerifyReport(
                False,
                count,
                0,
                seq - 1,
                seq,
                f"record {seq} does not match its chain hash: it was edited, or replaced",
            )
        if record.get("action") == "audit.seal":
            seal_events[int(str(record["target"]).removeprefix("seq:"))] = seq
        hashes[seq] = prev = computed
        expected += 1
    last_seq = expected - 1
    if head is not None and (head[0] != last_seq or (last_seq and head[1] != prev)):
        return VerifyReport(
            False,
            count,
            0,
            last_seq,
            last_seq + 1 if head[0] > last_seq else head[0] + 1,
            f"the chain head says the trail ends at record {head[0]}, but the records end at "
            f"{last_seq}: records were removed from, or added to, the end",
        )
    n_seals, sealed_up_to, previous_seal_ok = 0, 0, 0
    for seal in sorted(seals, key=lambda s: int(s["up_to_seq"])):
        n_seals += 1
        up_to = int(seal["up_to_seq"])
        if not _seal_signature_ok(public_key, seal):
            return VerifyReport(
                False,
                count,
                n_seals,
                last_seq,
                up_to,
                f"the seal over records up to {up_to} has a bad signature: the seal was forged or edited",
            )
        if up_to > last_seq:
            return VerifyReport(
                False,
                count,
                n_seals,
                last_seq,
                last_seq + 1,
                f"a seal covers records up to {up_to}, but the trail ends at {last_seq}: "
                f"records {last_seq + 1}..{up_to} were deleted",
            )
        if hashes.get(up_to) != seal["chain_hash"]:
            return VerifyReport(
                False,
                count,
                n_seals,
                last_seq,
                previous_seal_ok + 1,
                f"the records between {previous_seal_ok + 1} and {up_to} differ from what was sealed "
                f"(the chain was rewritten)",
            )
        previous_seal_ok = sealed_up_to = up_to
    sealed_targets = {int(s["up_to_seq"]) for s in seals}
    for target, event_seq in sorted(seal_events.items()):
        if target not in sealed_targets:
            return VerifyReport(
                False,
                count,
                n_seals,
                last_seq,
                event_seq,
                f"record {event_seq} records a seal over records up to {target}, "
                f"but that seal is missing (deleted)",
            )
    return VerifyReport(True, count, n_seals, last_seq, unsealed_records=last_seq - sealed_up_to)


def _seal_signature_ok(public_key: ec.EllipticCurvePublicKey | None, seal: dict[str, Any]) -> bool:
    """A seal's HSM signature verifies under the audit key (no key given: not checked)."""
    if public_key is None:
        return True
    message = seal_message(int(seal["up_to_seq"]), seal["chain_hash"], seal["sealed_at"])
    try:
        public_key.verify(seal["signature"], message, ec.ECDSA(_hash_for(public_key)))
    except InvalidSignature:
        return False
    return True


def _hash_for(public_key: ec.EllipticCurvePublicKey) -> SHA256 | SHA384:
    return curve_of(public_key).hash_algorithm


def verify_database(
    engine: Engine,
    public_key: ec.EllipticCurvePublicKey | None,
    *,
    external_seals: list[dict[str, Any]] | None = None,
    max_seal_age_seconds: float | None = None,
    now: dt.datetime | None = None,
) -> VerifyReport:
    """The trail in the database; with ``external_seals`` (the seal log outside the database) also that
    its tail was not cut, and with ``max_seal_age_seconds`` that the newest seal is recent."""
    with engine.connect() as conn:
        head_row = conn.execute(select(audit_chain_head).where(audit_chain_head.c.chain_id == 1)).first()
        seals = [dict(r) for r in conn.execute(select(audit_seals)).mappings()]
        rows = conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings()
        records = (_record_dict(r) for r in rows)
        report = verify_trail(
            records,
            seals,
            public_key,
            None if head_row is None else (int(head_row.last_seq), head_row.last_hash),
        )
    if not report.ok:
        return report
    if external_seals is not None:
        report = check_tail(report, seals, external_seals, public_key)
    if report.ok and max_seal_age_seconds is not None:
        report = check_freshness(report, [*seals, *(external_seals or [])], max_seal_age_seconds, now)
    return report


def check_tail(
    report: VerifyReport,
    db_seals: list[dict[str, Any]],
    external_seals: list[dict[str, Any]],
    public_key: ec.EllipticCurvePublicKey | None,
) -> VerifyReport:
    """Every seal of the log outside the database must be in the database, the newest one included: a
    trail cut back together with its newest seals and chain head is consistent, but shorter than the log.
    """
    in_db = {int(s["up_to_seq"]): s["chain_hash"] for s in db_seals}
    bad = dataclasses.replace(report, ok=False)
    if db_seals and not external_seals:
        return dataclasses.replace(
            bad,
            first_bad_seq=1,
            problem="the seal log outside the database is empty or missing: it was removed",
        )
    for seal in sorted(external_seals, key=lambda s: int(s["up_to_seq"])):
        up_to = int(seal["up_to_seq"])
        if not _seal_signature_ok(public_key, seal):
            return dataclasses.replace(
                bad,
                first_bad_seq=up_to,
                problem=f"the seal log's seal over records up to {up_to} has a bad signature (forged or edited)",
            )
        if up_to > report.last_seq:
            return dataclasses.replace(
                bad,
                first_bad_seq=report.last_seq + 1,
                problem=f"the seal log holds a seal over records up to {up_to} (sealed {seal['sealed_at']}), but "
                f"the database trail ends at {report.last_seq}: records {report.last_seq + 1}..{up_to} and their "
                f"seals were cut from the database (missing tail)",
            )
        if in_db.get(up_to) != seal["chain_hash"]:
            return dataclasses.replace(
                bad,
                first_bad_seq=up_to,
                problem=f"the seal over records up to {up_to} (sealed {seal['sealed_at']}) is in the seal log but "
                f"not in the database: the seal was deleted or the records before it rewritten",
            )
    return report


def check_freshness(
    report: VerifyReport, seals: list[dict[str, Any]], max_age_seconds: float, now: dt.datetime | None = None
) -> VerifyReport:
    """The newest seal must be younger than the seal interval plus slack: the daemon seals at least that
    often, so an older newest seal means sealing stopped, or the newest seals were cut with the log."""
    now = now or dt.datetime.now(dt.UTC)
    times = [_aware(s["sealed_at"]) for s in seals]
    if not times:
        return report
    newest = max(times)
    age = (now - newest).total_seconds()
    if age <= max_age_seconds:
        return report
    return dataclasses.replace(
        report,
        ok=False,
        first_bad_seq=report.last_seq + 1,
        problem=f"the newest seal ({_iso(newest)}) is {age:.0f} s old, more than the {max_age_seconds:.0f} s "
        f"allowed ([audit] seal_interval_seconds + seal_slack_seconds): sealing stopped, or the newest "
        f"records and seals were cut",
    )


def _aware(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


# --- export -------------------------------------------------------------------------------------
def export_lines(engine: Engine, public_key: ec.EllipticCurvePublicKey | None, ca_name: str) -> Iterator[str]:
    """JSON lines: a header, every record in order, then every seal (signature in base64)."""
    pem = (
        None
        if public_key is None
        else public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )
    yield json.dumps(
        {
            "type": "header",
            "format": EXPORT_FORMAT,
            "ca": ca_name,
            "exported_at": _iso(dt.datetime.now(dt.UTC)),
            "audit_public_key": pem,
        },
        sort_keys=True,
    )
    with engine.connect() as conn:
        head = conn.execute(select(audit_chain_head).where(audit_chain_head.c.chain_id == 1)).first()
        for row in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings():
            yield json.dumps({"type": "record", **_record_dict(row)}, sort_keys=True, ensure_ascii=False)
        for seal in conn.execute(select(audit_seals).order_by(audit_seals.c.up_to_seq)).mappings():
            yield json.dumps(
                {
                    "type": "seal",
                    "up_to_seq": seal["up_to_seq"],
                    "chain_hash": seal["chain_hash"],
                    "sealed_at": _iso(seal["sealed_at"]),
                    "key_label": seal["key_label"],
                    "signature": base64.b64encode(seal["signature"]).decode(),
                },
                sort_keys=True,
            )
    if head is not None:
        yield json.dumps(
            {"type": "head", "last_seq": head.last_seq, "last_hash": head.last_hash}, sort_keys=True
        )


def verify_export(lines: Iterable[str], public_key: ec.EllipticCurvePublicKey | None) -> VerifyReport:
    """Verify an export; ``public_key`` should come from the token or the CA home, not the file."""
    records: list[dict[str, Any]] = []
    seals: list[dict[str, Any]] = []
    head: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            kind = item.pop("type")
        except (json.JSONDecodeError, KeyError, AttributeError):
            return VerifyReport(
                False,
                len(records),
                len(seals),
                0,
                None,
                f"line {number} of the export is not a ckms audit item",
            )
        if kind == "header":
            if item.get("format") != EXPORT_FORMAT:
                raise ExportError(f"not a {EXPORT_FORMAT} file (format {item.get('format')!r})")
        elif kind == "record":
            records.append(item)
        elif kind == "seal":
            try:
                item["signature"] = base64.b64decode(item["signature"])
            except (KeyError, ValueError):
                item["signature"] = b""
            seals.append(item)
        elif kind == "head":
            head = (int(item["last_seq"]), str(item["last_hash"]))
    return verify_trail(records, seals, public_key, head)
