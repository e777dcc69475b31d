"""The guidance's procedural items and the record template a person fills in for each (issue 18 part 6).

A procedural item (``applicability: procedural`` in ``hardening/catalog``) is met by people following a
procedure, not by a setting a check can read: the reviewer gets nothing to verify unless someone records
that the procedure was done, by whom, when, and with what evidence. ``ckms attest`` records that;
this module says which items may be attested and what their template asks.

The CA host has no catalog (the wheel holds ``ckms_app`` only), so the procedural items are kept here as
a generated snapshot, :mod:`ckms_app.reporting.procedures_data`, rebuilt from the catalog with::

    python -m ckms_app.reporting.procedures hardening/catalog -o ckms_app/reporting/procedures_data.py

and checked against it by ``tests/integration/test_attest.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckms_app.errors import UnknownItem
from ckms_app.reporting.procedures_data import PROCEDURAL_ITEMS

_CATALOG_FILES = ("A.yml", "E.yml", "F.yml")


@dataclass(frozen=True)
class ProceduralItem:
    """One procedural guidance item as the catalog describes it."""

    id: str
    title_en: str
    title_ja: str
    summary_en: str
    procedure: str


def procedural_items() -> dict[str, ProceduralItem]:
    return {row["id"]: ProceduralItem(**row) for row in PROCEDURAL_ITEMS}


def procedural_item(item_id: str) -> ProceduralItem:
    """The procedural item ``item_id`` (``F.01``, ``f.01``), or a clear refusal."""
    items = procedural_items()
    wanted = item_id.strip().upper()
    if wanted in items:
        return items[wanted]
    if wanted in _ALL_ITEM_IDS:
        raise UnknownItem(
            f"{wanted} is not a procedural item (it is checked automatically or does not apply): "
            "only procedural items are attested"
        )
    raise UnknownItem(f"no guidance item {item_id!r}; procedural items: {', '.join(sorted(items))}")


def _all_item_ids() -> frozenset[str]:
    ids: set[str] = set()
    for chapter, count in (("A", 69), ("E", 37), ("F", 57)):
        ids.update(f"{chapter}.{n:02d}" for n in range(1, count + 1))
    return frozenset(ids)


_ALL_ITEM_IDS = _all_item_ids()


# --- the record template ------------------------------------------------------------------------------
_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Attestation record",
        "item": "Guidance item",
        "what": "What to check",
        "procedure": "Procedure",
        "who": "Who (entity ID, role)",
        "when": "When (date and time, UTC)",
        "evidence": "Evidence file (name; recorded with its SHA-256)",
        "result": "Result (done as written / deviations)",
        "note": "Note",
        "record": "Record it on the CA host with",
        "summary_lang": "",
    },
    "ja": {
        "title": "手順実施の記録",
        "item": "ガイダンス項目",
        "what": "確認すること",
        "procedure": "手順書",
        "who": "実施者（エンティティ ID、ロール）",
        "when": "実施日時（UTC）",
        "evidence": "証跡ファイル（名前。SHA-256 とともに記録される）",
        "result": "結果（手順どおり実施／逸脱）",
        "note": "備考",
        "record": "CA ホストで次のように記録する",
        "summary_lang": "（英語の要約）",
    },
}


def template(item: ProceduralItem, lang: str = "en") -> str:
    """The record template of one item as Markdown: what the catalog says, and blanks for who, when,
    evidence and result. The Japanese one uses the catalog's Japanese title; the catalog has no Japanese
    summary, so the English one is shown and marked as such."""
    labels = _LABELS.get(lang, _LABELS["en"])
    title = item.title_ja if lang == "ja" else item.title_en
    lines = [
        f"# {labels['title']}: {item.id} {title}",
        "",
        f"- {labels['item']}: {item.id} — {title}",
        f"- {labels['what']}{labels['summary_lang']}: {item.summary_en}",
        f"- {labels['procedure']}: {item.procedure}",
        f"- {labels['who']}: ",
        f"- {labels['when']}: ",
        f"- {labels['evidence']}: ",
        f"- {labels['result']}: ",
        f"- {labels['note']}: ",
        "",
        f"{labels['record']}:",
        "",
        f"    ckms attest {item.id} --evidence FILE --note TEXT --as ENTITY",
        "",
    ]
    return "\n".join(lines)


# --- the snapshot generator -------------------------------------------------------------------------
def items_from_catalog(catalog_dir: Path, loader: Callable[[str], Any]) -> list[dict[str, str]]:
    """The procedural items of the catalog's chapter files, in catalog order."""
    rows = []
    for name in _CATALOG_FILES:
        doc = loader((catalog_dir / name).read_text(encoding="utf-8"))
        for entry in doc["items"]:
            if entry.get("applicability") == "procedural":
                rows.append(
                    {
                        "id": str(entry["id"]),
                        "title_en": str(entry["title_en"]),
                        "title_ja": str(entry["title_ja"]),
                        "summary_en": " ".join(str(entry["summary_en"]).split()),
                        "procedure": str(entry.get("procedure", "")),
                    }
                )
    return rows


def render_module(rows: Iterable[Mapping[str, str]]) -> str:
    body = "".join(f"    {dict(row)!r},\n" for row in rows)
    return (
        '"""Generated from hardening/catalog by ``python -m ckms_app.reporting.procedures``: do not edit."""\n'
        "\n"
        "# ruff: noqa: E501\n"
        "\n"
        "PROCEDURAL_ITEMS: tuple[dict[str, str], ...] = (\n"
        f"{body}"
        ")\n"
    )


def main(argv: list[str] | None = None) -> int:
    import yaml  # type: ignore[import-untyped]  # only where the catalog is, never on the CA host

    parser = argparse.ArgumentParser(description="regenerate the procedural-item snapshot from the catalog")
    parser.add_argument("catalog_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args(argv)
    text = render_module(items_from_catalog(args.catalog_dir, yaml.safe_load))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
