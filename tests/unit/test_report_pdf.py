"""The form to file prints to PDF with a cover, the summary, failing and limited items first.

Rendered from a small synthetic result set with headless Chromium (scripts/bootstrap-host.sh installs
it). The PDF is checked in its structure -- A4 pages, a named destination per item (``#F.06``) on the
page where the item is printed, in the order a reviewer reads -- and as an image: no PDF rasteriser is
installed (poppler-utils is not), so the form itself, whose layout is the same on screen as on paper
(A4 wide, the cover exactly one page high), is captured by Chromium and its first pages are decoded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hardening import levels
from hardening.catalog import load_catalog
from hardening.report import Extras, evaluate, write_report
from hardening.report_form import COLOURS, COVER_BAND
from tests.unit.test_report_render import _chromium, _png_pixels

A4_PX = (794, 1123)  # 210 x 297 mm at 96 px per inch


def rec(check: str, outcome: str = "passed", **extra: Any) -> dict[str, Any]:
    return {
        "check": check,
        "test": "t",
        "host": "ca1",
        "outcome": outcome,
        "duration_s": 0.1,
        "message": "PermitRootLogin yes" if outcome == "failed" else None,
        "evidence": [{"label": "seen", "value": "evidence-of-" + check}],
        "limitation": None,
        "at": "2026-11-30T07:00:00Z",
        **extra,
    }


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    catalog = load_catalog()
    records = []
    for item in ("A.05", "A.06", "E.09", "F.06", "F.12"):
        for c in catalog[item].all_checks():
            r = rec(c)
            if c in levels.RUNTIME_CHECKS:
                r["evidence"].append({"label": "verification level", "value": "configuration: lab container"})
            records.append(r)
    failing = catalog["F.06"].all_checks()[0]
    records = [rec(failing, "failed") if r["check"] == failing else r for r in records]
    inventory = {
        "collected_at": "2026-11-30T07:00:00Z",
        "hosts": {"ca1": {"virtualisation": "systemd-nspawn"}},
    }
    items = evaluate(catalog, records, host_kinds=levels.host_kinds(inventory))
    out: dict[str, Path] = {}
    for lang in ("en", "ja"):
        d = tmp_path_factory.mktemp(f"form-{lang}")
        files = write_report(d, items, lang, Extras(inventory=inventory), pdf=d / "report.pdf")
        out[lang] = files["pdf"]
        out[f"{lang}-form"] = files["form"]
    return out


def _objects(pdf: bytes) -> dict[int, bytes]:
    return {int(m[1]): m[2] for m in re.finditer(rb"(?s)(?<![0-9])(\d+) 0 obj\s*(.*?)\s*endobj", pdf)}


def _pages(objs: dict[int, bytes], node: int) -> list[int]:
    body = objs[node]
    kids = re.search(rb"/Kids\s*\[([^\]]*)\]", body)
    if not kids:
        return [node]
    return [p for k in re.findall(rb"(\d+) 0 R", kids[1]) for p in _pages(objs, int(k))]


def pdf_layout(path: Path) -> tuple[list[int], dict[str, int], str]:
    """Page objects in reading order, named destination -> page number (1-based), and the title."""
    pdf = path.read_bytes()
    assert pdf.startswith(b"%PDF-")
    objs = _objects(pdf)
    catalog = next(b for b in objs.values() if re.search(rb"/Type\s*/Catalog", b))
    pages = _pages(objs, int(re.search(rb"/Pages (\d+) 0 R", catalog)[1]))  # type: ignore[index]
    dests_ref = re.search(rb"/Dests (\d+) 0 R", catalog)
    assert dests_ref, "the PDF has no named destinations (no anchors)"
    dests = {
        name.decode(): pages.index(int(page)) + 1
        for name, page in re.findall(rb"/([^\s/\[\]<>]+)\s*\[(\d+) 0 R", objs[int(dests_ref[1])])
    }
    raw_title = re.search(rb"/Title\s*(<[0-9A-Fa-f]+>|\((?:\\.|[^\\)])*\))", pdf)
    assert raw_title
    t = raw_title[1]
    title = bytes.fromhex(t[1:-1].decode()).decode("utf-16") if t.startswith(b"<") else t[1:-1].decode()
    return pages, dests, title


def test_the_pdf_is_a4_with_cover_summary_failing_items_first_and_an_anchor_per_item(
    forms: dict[str, Path],
) -> None:
    pdf = forms["en"].read_bytes()
    pages, dests, title = pdf_layout(forms["en"])
    assert title.startswith("ckms hardening report")
    assert len(pages) >= 5, len(pages)
    boxes = set(re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf))
    assert all(abs(float(w) - 595) < 2 and abs(float(h) - 842) < 2 for w, h in boxes), boxes  # A4 in points
    assert len({i for i in dests if re.fullmatch(r"[AEF]\.\d\d", i)}) == 163  # every item has its anchor
    assert dests["summary"] == 2  # the cover is page 1 alone
    # needs attention: the failing F.06, then the configuration-only A.06 / F.12, before every other item
    assert dests["attention"] > dests["summary"]
    assert dests["F.06"] <= dests["A.06"] <= dests["A.05"] and dests["F.12"] <= dests["A.05"]
    assert dests["F.06"] < dests["A.01"]
    assert dests["signature"] == len(pages)
    # the evidence is printed, not folded away: the PDF is much longer than the item count would give
    assert len(pdf) > 50_000


def test_the_japanese_form_prints_too(forms: dict[str, Path]) -> None:
    pages, dests, title = pdf_layout(forms["ja"])
    assert title.startswith("ckms 堅牢化レポート") and dests["summary"] == 2 and len(pages) >= 5
    # the Japanese text is set in a Japanese font, not as empty boxes (bootstrap installs IPA/Noto CJK)
    fonts = set(re.findall(rb"/BaseFont /[A-Z]{6}\+([A-Za-z0-9-]+)", forms["ja"].read_bytes()))
    assert any(re.search(rb"IPA|CJK|Gothic|Mincho", f) for f in fonts), (
        f"no Japanese font embedded ({fonts}): install fonts-ipafont-gothic or fonts-noto-cjk"
    )
    page = forms["ja-form"].read_text()
    assert "<html lang='ja'>" in page and "レビューと承認" in page and "合格（設定のみ確認）" in page


def _count(rows: list[bytes], colour: str, bpp: int) -> int:
    want = bytes.fromhex(colour.lstrip("#"))
    return sum(r[i : i + 3] == want for r in rows for i in range(0, len(r), bpp))


def test_the_first_pages_as_an_image_show_the_cover_then_the_summary(
    forms: dict[str, Path], tmp_path: Path
) -> None:
    shot = tmp_path / "form.png"
    width, height = A4_PX[0], 2 * A4_PX[1]
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            forms["en-form"].as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    w, h, rows = _png_pixels(shot)
    assert (w, h) == (width, height)
    bpp = len(rows[0]) // w
    cover, second = rows[: A4_PX[1]], rows[A4_PX[1] :]
    # page 1: the cover band across the top, nothing of the results
    assert _count(cover[:200], COVER_BAND, bpp) > 0.6 * 200 * w
    assert _count(cover, COLOURS["fail"], bpp) == 0
    # page 2: the summary's counts (FAIL, configuration-only) and the item index in status colours
    assert _count(second[:400], COLOURS["fail"], bpp) > 500
    assert _count(second[:400], COLOURS["pass-configuration"], bpp) > 500
    assert _count(second, COLOURS["pass"], bpp) > 500


def test_the_cli_writes_the_pdf(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps([rec("check:F.06.l.sshd_hardened", "failed")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hardening.report",
            "--results",
            str(results),
            "--out",
            str(tmp_path / "o"),
            "--pdf",
            str(tmp_path / "o" / "report.pdf"),
            "--lang",
            "ja",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(PDF " in proc.stdout
    pages, dests, _ = pdf_layout(tmp_path / "o" / "report.pdf")
    assert dests["F.06"] < dests["A.01"]
