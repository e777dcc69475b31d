"""Attestations of procedural items: who did what a person must do, with which evidence, when.

Why: a procedural item (a key ceremony, a physical inspection) cannot be checked by a machine; the
report can only show that someone attested doing it, with an evidence file the reviewer can verify by
its sha256 and the audit trail record (``audit_seq``) that holds the attestation. ``ckms attest list
--json`` writes the file this module reads (``attestations.json`` in the report's input directory)::

    {"<ITEM>": [{"person": str, "at": ISO-8601, "evidence_name": str,
                 "evidence_sha256": hex, "audit_seq": int, "note": str}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardening.catalog import Control
from hardening.provenance import parse_time


def is_procedural(control: Control) -> bool:
    """An item a person carries out: procedural itself or through one of its sub-items."""
    return control.applicability == "procedural" or any(
        s.applicability == "procedural" for s in control.subitems.values()
    )


class AttestationError(ValueError):
    """attestations.json is malformed or names an item that is unknown or not procedural."""


_ATTEST_FIELDS: dict[str, type] = {
    "person": str,
    "at": str,
    "evidence_name": str,
    "evidence_sha256": str,
    "audit_seq": int,
    "note": str,
}


def load_attestations(path: Path | None, catalog: Mapping[str, Control]) -> dict[str, list[dict[str, Any]]]:
    """``{"A.05": [{"person", "at", "evidence_name", "evidence_sha256", "audit_seq", "note"}]}``.

    Written by ``ckms attest list --json``. A missing file means nothing is attested. Every problem is
    reported at once; an attestation of an unknown or non-procedural item is an error, not ignored.
    """
    if path is None or not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AttestationError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise AttestationError(f"{path}: expected an object item -> list of attestations")
    problems: list[str] = []
    for item, entries in doc.items():
        control = catalog.get(item)
        if control is None:
            problems.append(f"{item}: not a catalog item")
            continue
        if not is_procedural(control):
            problems.append(f"{item}: not a procedural item ({control.applicability})")
        if not isinstance(entries, list):
            problems.append(f"{item}: expected a list of attestations")
            continue
        for n, e in enumerate(entries):
            where = f"{item}[{n}]"
            if not isinstance(e, dict):
                problems.append(f"{where}: expected an object")
                continue
            for key, kind in _ATTEST_FIELDS.items():
                if not isinstance(e.get(key), kind) or isinstance(e.get(key), bool):
                    problems.append(f"{where}: '{key}' must be {kind.__name__}")
            if isinstance(e.get("at"), str) and parse_time(e["at"]) is None:
                problems.append(f"{where}: 'at' {e['at']!r} is not an ISO-8601 time")
            sha = e.get("evidence_sha256")
            if isinstance(sha, str) and not (len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)):
                problems.append(f"{where}: 'evidence_sha256' is not 64 lower-case hex digits")
            extra = set(e) - set(_ATTEST_FIELDS)
            if extra:
                problems.append(f"{where}: unknown keys {sorted(extra)}")
    if problems:
        raise AttestationError(f"{path}: " + "; ".join(problems))
    return {k: list(v) for k, v in doc.items()}
