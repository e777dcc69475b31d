"""The lint helper's own Go tests (tools/ckms-lint): its small-key stand-in gives zlint's answer.

Run from the Python suite so that ``make test`` covers them; the Go build cache that
``scripts/build-ckms-lint.sh`` filled makes this a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "tools" / "ckms-lint"


def test_go_tests_of_the_lint_helper_pass() -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("'go' is not installed: make tools installs it and builds the lint helper")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=readonly"}
    done = subprocess.run(
        [go, "test", "-count=1", "./..."], cwd=SOURCE, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
