"""Print the report's form (hardening.report_form) to PDF with headless Chromium.

Why Chromium: it is already on every controller (scripts/bootstrap-host.sh installs it for the
report's rendering test), it is maintained, it honours CSS paged media (``@page``, page breaks) and it
writes named destinations for in-document links, so ``report.pdf#F.06`` opens at the item. No network
is touched: the form is one self-contained file.

    python -m hardening.report_pdf build/report/form.html build/report/report.pdf
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT_S = 300


class PdfError(RuntimeError):
    """Chromium is missing or did not write a PDF."""


def chromium() -> str:
    """The Chromium executable (``CKMS_CHROMIUM`` is not consulted: PATH decides, like the tests)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        raise PdfError("chromium is not installed (scripts/bootstrap-host.sh installs it): no PDF written")
    return exe


def html_to_pdf(page: Path, out: Path, timeout: float = TIMEOUT_S) -> Path:
    """Print ``page`` to ``out`` (A4 from the page's ``@page`` rule, no browser header or footer)."""
    if not page.is_file():
        raise PdfError(f"{page}: no such page")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ckms-pdf-") as profile:  # no shared browser profile
        proc = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                "--generate-pdf-document-outline",
                f"--print-to-pdf={tmp}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if not tmp.is_file() or tmp.read_bytes()[:5] != b"%PDF-":
        tmp.unlink(missing_ok=True)
        raise PdfError(f"chromium wrote no PDF for {page} (exit {proc.returncode}): {proc.stderr[-1500:]}")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hardening.report_pdf FORM.html OUT.pdf", file=sys.stderr)
        return 2
    try:
        print(html_to_pdf(Path(args[0]), Path(args[1])))
    except PdfError as exc:
        print(f"report_pdf: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
