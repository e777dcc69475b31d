"""Run provenance: which run produced a report, from what code, catalog, tools and inventory, by whom.

Why: a reviewer signs a report, not a directory. They must be able to see that every file the report
cites came from the same run (not a drill file left from yesterday next to today's checks), and which
commit, catalog and tool versions produced it. One run ID ties the files together:

1. the run starts: ``python -m hardening.provenance start --out DIR [--inventory HOSTS] [--command ...]``
   writes ``DIR/provenance.json`` (run ID, start time, commit + dirty flag, catalog hash, tool versions,
   inventory digest, operator, command line) and prints ``CKMS_RUN_ID=...`` for ``eval``;
2. every producer run with ``CKMS_RUN_ID`` in its environment stamps its records with ``run_id``
   (``hardening/checks/conftest.py`` does; drills, inventory and baseline should);
3. ``hardening.report`` reads ``DIR/provenance.json`` (or ``--provenance``), checks each input against
   it and writes the header. An input is "this run" when it carries the run's ID, or carries no ID but
   was made at or after the run's start; it is "other run" when it carries another ID or is older than
   the start. Other-run records are left out of the items' statuses and listed (``--other-runs mark``,
   the default) or make the report refuse to render (``--other-runs refuse``).

Without a run (no provenance file, no ``CKMS_RUN_ID``) the report says "no run ID" and checks nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from hardening.catalog import CATALOG_DIR, REPO_ROOT

ENV = "CKMS_RUN_ID"
FILENAME = "provenance.json"
RUN_ID_RE = re.compile(r"^run-\d{8}T\d{6}Z-[0-9a-f]{8}$")
PACKAGES = ("ansible-core", "pytest", "pytest-testinfra", "cryptography", "PyYAML")

THIS_RUN = "this-run"
OTHER_RUN = "other-run"
UNCHECKED = "unchecked"  # no run to check against, or the input carries neither ID nor time


class ProvenanceError(ValueError):
    """The run's provenance is unusable or an input belongs to another run (``--other-runs refuse``)."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> dt.datetime | None:
    """An ISO-8601 time (``Z`` or offset; naive means UTC), or ``None`` if ``text`` is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def new_run_id(at: dt.datetime | None = None) -> str:
    """``run-20261130T070102Z-1a2b3c4d``: sortable by start time, unique by its random tail."""
    return f"run-{(at or now_utc()).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise ProvenanceError(f"malformed run ID {run_id!r} (expected e.g. run-20261130T070102Z-1a2b3c4d)")
    return run_id


# ------------------------------------------------------------------------------------------ facts


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def commit_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """HEAD and whether tracked files differ from it (the code that ran is then not exactly HEAD)."""
    head = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": head.strip() if head else None,
        "dirty": None if status is None else bool(status.strip()),
        "changed_files": None if status is None else len(status.splitlines()),
    }


def catalog_hash(directory: Path = CATALOG_DIR) -> dict[str, Any]:
    """sha256 of each catalog file and one over them all (``sha256sum``-style lines, sorted by name)."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.yml"))}
    lines = "".join(f"{h}  {n}\n" for n, h in files.items())
    return {"sha256": hashlib.sha256(lines.encode()).hexdigest(), "files": files}


def file_digest(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _first_line(cmd: Sequence[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def tool_versions() -> dict[str, str | None]:
    """Python, the Python packages that ran the checks, OpenSCAP and Chromium (``None``: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["openscap"] = _first_line(["oscap", "--version"])
    versions["chromium"] = _first_line(["chromium", "--version"])
    return versions


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def collect(
    run_id: str,
    started_at: dt.datetime,
    command: str,
    inventory: Path | None = None,
    catalog_dir: Path = CATALOG_DIR,
    repo: Path = REPO_ROOT,
) -> dict[str, Any]:
    """Everything the report's header shows about the run (without the inputs, checked later)."""
    return {
        "run_id": check_run_id(run_id),
        "started_at": iso(started_at),
        **commit_state(repo),
        "catalog": catalog_hash(catalog_dir),
        "tools": tool_versions(),
        "inventory": str(inventory) if inventory else None,
        "inventory_digest": file_digest(inventory),
        "operator": operator(),
        "command": command,
    }


def start(out: Path, command: str, inventory: Path | None = None) -> dict[str, Any]:
    """Begin a run: write ``out/provenance.json`` and return it."""
    started = now_utc()
    doc = collect(new_run_id(started), started, command, inventory)
    out.mkdir(parents=True, exist_ok=True)
    (out / FILENAME).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return doc


def load(path: Path) -> dict[str, Any]:
    """A provenance file written by :func:`start`; its run ID and start time must be well formed."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProvenanceError(f"{path}: not a readable provenance file: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProvenanceError(f"{path}: expected a JSON object")
    if doc.get("run_id") is None:  # a report rendered without a run wrote it: nothing to check against
        return doc
    check_run_id(str(doc.get("run_id")))
    if parse_time(doc.get("started_at")) is None:
        raise ProvenanceError(f"{path}: started_at {doc.get('started_at')!r} is not an ISO-8601 time")
    return doc


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Run:
    """The run a report belongs to (``run_id`` None: no run, nothing is checked)."""

    run_id: str | None
    started_at: dt.datetime | None = None

    def verdict(self, run_id: object, at: dt.datetime | None) -> str:
        """this-run / other-run / unchecked for one record or file (see the module docstring)."""
        if self.run_id is None:
            return UNCHECKED
        if run_id:
            return THIS_RUN if run_id == self.run_id else OTHER_RUN
        if at is None or self.started_at is None:
            return UNCHECKED
        return THIS_RUN if at >= self.started_at else OTHER_RUN


@dataclass
class InputCheck:
    """One input file of the report and whether it belongs to the run."""

    path: str
    kind: str  # results | inventory | openscap | file
    verdict: str
    run_ids: list[str] = field(default_factory=list)
    oldest: str | None = None
    newest: str | None = None
    records: int = 0
    other_run_records: int = 0
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _span(times: Iterable[dt.datetime | None]) -> tuple[str | None, str | None]:
    ts = sorted(t for t in times if t is not None)
    return (iso(ts[0]), iso(ts[-1])) if ts else (None, None)


def split_records(
    path: Path, records: list[dict[str, Any]], run: Run
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], InputCheck]:
    """This run's records, other runs' records (each marked ``provenance: other-run``), and the file's check."""
    mine, other = [], []
    for rec in records:
        v = run.verdict(rec.get("run_id"), parse_time(rec.get("at")))
        if v == OTHER_RUN:
            other.append({**rec, "provenance": OTHER_RUN, "source": str(path)})
        else:
            mine.append(rec)
    oldest, newest = _span(parse_time(r.get("at")) for r in records)
    verdicts = {run.verdict(r.get("run_id"), parse_time(r.get("at"))) for r in records}
    verdict = OTHER_RUN if OTHER_RUN in verdicts else THIS_RUN if verdicts == {THIS_RUN} else UNCHECKED
    check = InputCheck(
        str(path),
        "results",
        verdict,
        sorted({str(r["run_id"]) for r in records if r.get("run_id")}),
        oldest,
        newest,
        len(records),
        len(other),
        file_digest(path),
    )
    return mine, other, check


def check_document(path: Path, kind: str, run_id: object, at: object, run: Run) -> InputCheck:
    """One JSON document (inventory.json, an OpenSCAP summary) with its own ``run_id`` / time field."""
    t = parse_time(at)
    return InputCheck(
        str(path),
        kind,
        run.verdict(run_id, t),
        [str(run_id)] if run_id else [],
        iso(t) if t else None,
        iso(t) if t else None,
        sha256=file_digest(path),
    )


def check_file(path: Path, run: Run) -> InputCheck:
    """Any other file the report cites (e.g. unit-junit.xml): its JUnit timestamp, else its mtime."""
    at: dt.datetime | None = None
    if path.suffix == ".xml":
        try:
            root = ET.parse(path).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            stamp = suite.get("timestamp") if suite is not None else None
            at = parse_time(stamp)
        except ET.ParseError:
            at = None
    if at is None and path.exists():
        at = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return check_document(path, "file", None, iso(at) if at else None, run)


def run_for_report(provenance: Path | None, run_id: str | None) -> tuple[Run, dict[str, Any] | None]:
    """The run to check inputs against: the provenance file's, or a bare ``--run-id`` / ``CKMS_RUN_ID``."""
    doc = load(provenance) if provenance is not None and provenance.is_file() else None
    if doc is not None and doc.get("run_id") is None:
        doc = None
    if doc is not None:
        if run_id and run_id != doc["run_id"]:
            raise ProvenanceError(
                f"run ID {run_id} (--run-id / {ENV}) is not the run of {provenance} ({doc['run_id']})"
            )
        return Run(doc["run_id"], parse_time(doc["started_at"])), doc
    if run_id:
        return Run(check_run_id(run_id)), None
    return Run(None), None


def header(
    doc: Mapping[str, Any] | None,
    run: Run,
    report_command: str,
    generated: str,
    inputs: list[InputCheck],
    inventory_record: Path | None = None,
) -> dict[str, Any]:
    """The report's provenance section: the run's facts, this report's command and the inputs' checks.

    Facts the run's start did not record (a bare run ID) are collected now, and say so.
    """
    base: dict[str, Any] = dict(doc) if doc else {}
    if not doc:
        base.update(commit_state())
        base["catalog"] = catalog_hash()
        base["tools"] = tool_versions()
        base["operator"] = operator()
        base["run_id"] = run.run_id
        base["started_at"] = None
        base["collected_at_report_time"] = True
    base["report_command"] = report_command
    base["generated_at"] = generated
    base["inventory_record_digest"] = file_digest(inventory_record)
    base["inputs"] = [i.as_dict() for i in inputs]
    base["other_run_inputs"] = [i.path for i in inputs if i.verdict == OTHER_RUN]
    return base


def command_line(argv: Sequence[str] | None = None) -> str:
    return shlex.join(["python", "-m", "hardening.report", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardening.provenance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="begin a run: write OUT/provenance.json, print CKMS_RUN_ID=...")
    s.add_argument("--out", type=Path, required=True, help="the report directory of this run")
    s.add_argument("--inventory", type=Path, help="the Ansible inventory the run checks")
    s.add_argument(
        "--command", default=None, help="the command line that started the run (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.inventory is not None and not args.inventory.is_file():
        print(f"provenance: no inventory at {args.inventory}", file=sys.stderr)
        return 2
    command = args.command or shlex.join(["python", "-m", "hardening.provenance", *(argv or sys.argv[1:])])
    doc = start(args.out, command, args.inventory)
    print(f"{ENV}={doc['run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
