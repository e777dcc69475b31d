"""The HTML report renders in a real browser (headless Chromium) with its summary on screen.

A reviewer reads report.html in a browser: the page must render without network, its filters must
run, the failing items must come before the rest and the summary cards must be what is on screen
first. Chromium is installed by scripts/bootstrap-host.sh.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from hardening.catalog import load_catalog
from hardening.coverage import Gap
from hardening.report import Extras, evaluate, write_report


def _record(check: str, outcome: str, host: str = "ca1", message: str | None = None) -> dict:
    return {
        "check": check,
        "test": "t",
        "host": host,
        "outcome": outcome,
        "duration_s": 0.1,
        "message": message,
        "evidence": [{"label": "seen", "value": "x"}],
        "limitation": None,
    }


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed (scripts/bootstrap-host.sh installs it)"
    return exe


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of a non-interlaced 8-bit PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if colour == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog = load_catalog()
    f06 = catalog["F.06"].all_checks()
    records = [_record(c, "passed") for c in f06]
    records[0] = _record(f06[0], "failed", message="PermitRootLogin yes")
    records.append(_record(catalog["F.49"].all_checks()[0], "passed", host="router"))
    gaps = [Gap("A.32", "missing-reference", "hardening:inventory: example")]
    items = evaluate(catalog, records, gaps)
    out = tmp_path_factory.mktemp("report")
    write_report(out, items, "en", Extras(gaps, None))
    return out / "report.html"


def test_failing_items_come_first_and_every_item_is_on_the_page(report_page: Path) -> None:
    page = report_page.read_text()
    assert page.index("id='F.06'") < page.index("id='A.01'")  # the failing F.06 before chapter A
    assert page.count("class='item ") == 163
    assert "PermitRootLogin yes" in page and "hardening:inventory: example" in page


def test_the_page_renders_in_chromium_with_the_summary_on_screen(report_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,700",
            report_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    width, height, rows = _png_pixels(shot)
    assert (width, height) == (1200, 700)
    bpp = len(rows[0]) // width
    fail_card = bytes((0xFC, 0xE8, 0xE6))  # the FAIL card's background (#fce8e6)
    top = rows[:350]
    hits = sum(r[i : i + 3] == fail_card for r in top for i in range(0, len(r), bpp))
    assert hits > 500, "the summary's FAIL card is not on the first screen"
    colours = {r[i : i + 3] for r in rows[::10] for i in range(0, len(r), bpp * 10)}
    assert len(colours) > 5, "the screenshot is blank"


def test_the_filters_run_in_chromium(report_page: Path) -> None:
    # --dump-dom prints the DOM after the page's script ran. A link like report.html#host=router shows
    # only the items with a result from that host: the filter code ran and hid every other row.
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            report_page.as_uri() + "#host=router",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(
        r'<tr class="item [^"]*" id="([A-F.0-9]+)"[^>]*?(style="display: none;")?>', proc.stdout
    )
    shown = [item for item, hidden in rows if not hidden]
    assert len(rows) == 163 and shown == ["F.49"], shown[:10]
