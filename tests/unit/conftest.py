"""Fixtures shared by the unit tests of the lint helper (test_linter, test_linter_supervision)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckms_app.authority.linter import find_linter_binary
from ckms_app.errors import LintUnavailable

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lint_bin() -> Path:
    """The real helper: reuse the cached build, or build it once with the project's script."""
    try:
        return find_linter_binary()
    except LintUnavailable:
        subprocess.run([str(REPO / "scripts" / "build-ckms-lint.sh")], check=True)
        return find_linter_binary()


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """The test's own event loop; ``runner.run(coro)`` is the blocking call into it."""
    with asyncio.Runner() as loop:
        yield loop
