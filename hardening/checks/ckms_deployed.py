"""The commit the CA host runs, and running its tests (not a test module: pytest does not collect it).

Checks that judge the deployed code by its own tests or analysis (F.55, E.29) export the commit the CA's
wheel was built from, make sure the installed package is exactly that commit, and run tools on the
export on the controller.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckms_checks import CA_VENV, REPO

SITE = f"{CA_VENV}/lib/python3.*/site-packages"


def local(cmd: list[str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wheel_commit(depth: int = 300) -> str | None:
    """The commit the controller's ckms wheel was built from.

    scripts/build-wheelhouse.sh builds from git HEAD and stamps the wheelhouse with the SHA-256 of
    ``git rev-parse HEAD:ckms_app HEAD:pyproject.toml``; the commit is found again by that stamp (other
    commits may have landed since the build)."""
    stamp_file = Path(os.environ.get("CKMS_WHEELHOUSE", REPO / "build" / "wheelhouse")) / ".src-stamp"
    stamp = stamp_file.read_text().strip() if stamp_file.exists() else ""
    if not stamp.startswith("head-"):
        return None
    commits = local(["git", "rev-list", "-n", str(depth), "HEAD"]).stdout.split()
    paths = ("ckms_app", "pyproject.toml")
    args = [f"{c}:{p}" for c in commits for p in paths]
    ids = local(["git", "rev-parse", *args]).stdout.split()
    for i, c in enumerate(commits):
        blob = "".join(x + "\n" for x in ids[len(paths) * i : len(paths) * (i + 1)]).encode()
        if hashlib.sha256(blob).hexdigest() == stamp.removeprefix("head-"):
            return c
    return None


@contextlib.contextmanager
def exported_commit(prefix: str) -> Iterator[tuple[Path, str]]:
    """The committed tree the CA's wheel was built from (else HEAD) in a temporary directory, and its
    short commit id. The whole commit: tests read the roles, the catalog and the docs as well as the code."""
    commit = wheel_commit() or "HEAD"
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        arch = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "xf", "-", "-C", tmp], input=arch.stdout, check=True)
        yield Path(tmp), local(["git", "rev-parse", "--short", commit]).stdout.strip()


def deployed_is(host, tree: Path) -> dict:
    """Compare every module of the CA host's installed ckms_app package with the exported tree's."""
    pkg = host.run(f"ls -d {SITE}/ckms_app").stdout.strip()
    remote = {}
    for line in host.run(f"cd {pkg} && find . -name '*.py' -exec sha256sum {{}} +").stdout.splitlines():
        digest, _, name = line.partition("  ")
        remote[name.strip().removeprefix("./")] = digest
    local_files = {
        p.relative_to(tree / "ckms_app").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tree / "ckms_app").rglob("*.py")
    }
    return {
        "installed files": len(remote),
        "differ": sorted(n for n in set(remote) | set(local_files) if remote.get(n) != local_files.get(n)),
    }


def run_pytest(tree: Path, tests: list[str], junit: Path, timeout: int) -> dict[str, Any]:
    """Run ``tests`` of the exported tree with this python on the controller: rc, summary line, seconds."""
    start = time.monotonic()
    run = local(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests,
         f"--junitxml={junit}", f"--basetemp={tree}/.pytest-{junit.stem}"],
        cwd=tree,
        timeout=timeout,
    )  # fmt: skip
    summary = run.stdout.strip().splitlines()[-1:] if run.stdout.strip() else [run.stderr[-300:]]
    return {
        "rc": run.returncode,
        "summary": summary,
        "seconds": round(time.monotonic() - start, 1),
        "tail": run.stdout[-600:],
    }
