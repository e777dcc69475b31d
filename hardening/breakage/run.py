"""The extended breakage run: every automated A/E item's checks must fail when its control is broken.

    python -m hardening.breakage.run [--items A.05,E.09] [--inventory FILE] [--out build/report/breakage]

For each break of ``hardening/breakage/breaks.yml``, one at a time:

1. baseline: the item's checks and the control checks (other items) run and must pass, else the break
   is reported "baseline failing" and not applied (a break proves nothing on a failing check);
2. break: the break commands run as root on the host, then the same checks run again: every check the
   break names must fail with a message that begins with the item ID, and the control checks must still
   pass (the break is specific: it fails its item's checks, not everything);
3. restore: the restore commands run, and the checks run a third time and must all pass again.

A JSON and a Markdown summary are written to the output directory. Exit status 0 when every break
failed its checks and was restored, 1 otherwise (2: the run itself could not start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hardening.breakage.catalog import BREAKS_FILE, Break, BreakCatalog, load_breaks
from hardening.catalog import REPO_ROOT, load_catalog

CHECKS_DIR = REPO_ROOT / "hardening" / "checks"
_MARK_RE = re.compile(r"""@pytest\.mark\.check\(\s*["'](check:[^"']+)["']""")
_ERR_PREFIX_RE = re.compile(r"^(?:[A-Za-z_.]+(?:Error|Exception)|Failed):\s*")
CONTROLLER = "controller"  # a break's host that is this machine (custodians' shares, the inventory)
CHECK_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 300


def check_modules(directory: Path = CHECKS_DIR) -> dict[str, Path]:
    """Check ID -> the module defining it (from the ``check`` markers in the source)."""
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("test_*.py")):
        for check in _MARK_RE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(check, path)
    return found


def names_item(message: str | None, item: str) -> bool:
    """True when a failure message begins with the item ID (after an exception class name)."""
    text = _ERR_PREFIX_RE.sub("", (message or "").strip())
    return re.match(rf"{re.escape(item)}(?!\d)", text) is not None


@dataclass
class PhaseResult:
    """One run of the checks: per check ID the outcomes over hosts and the first failure message."""

    outcomes: dict[str, str] = field(default_factory=dict)  # check -> passed | failed | skipped | missing
    messages: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BreakResult:
    id: str
    item: str
    host: str
    what: str
    fails: list[str]
    status: str = "not run"  # ok | baseline failing | not failed | not specific | restore failed | error
    problems: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    restored_ok: bool = False
    not_host_checks: list[str] = field(default_factory=list)
    baseline_other_failing: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)


class Runner:
    """Runs breaks against one inventory, one at a time."""

    def __init__(
        self, inventory: Path, modules: dict[str, Path], controls: tuple[str, ...], prelude: str = ""
    ) -> None:
        self.inventory = inventory
        self.modules = modules
        self.controls = controls
        self.prelude = prelude
        self._hosts: dict[str, Any] = {}

    # --- hosts ------------------------------------------------------------------------------------
    def host(self, name: str) -> Any:
        if name not in self._hosts:
            import testinfra  # imported late: the unit test of the catalog does not need it

            self._hosts[name] = testinfra.get_host(f"ansible://{name}", ansible_inventory=str(self.inventory))
        return self._hosts[name]

    def shell(self, host: str, script: str) -> tuple[int, str]:
        """Run a script (after the catalog's prelude) as root on the host, or here for "controller";
        (rc, tail of stdout+stderr)."""
        full = f"{self.prelude}\n{script}"
        if host == CONTROLLER:
            try:
                proc = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", full],
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                return 124, f"timed out after {COMMAND_TIMEOUT_S} s"
            return proc.returncode, (proc.stdout + proc.stderr).strip()[-1500:]
        out = self.host(host).run(f"timeout {COMMAND_TIMEOUT_S} bash -euo pipefail -c {shlex.quote(full)}")
        return out.rc, (out.stdout + out.stderr).strip()[-1500:]

    # --- checks -----------------------------------------------------------------------------------
    def run_checks(self, checks: list[str], label: str) -> PhaseResult:
        missing = [c for c in checks if c not in self.modules]
        files = sorted({str(self.modules[c].relative_to(REPO_ROOT)) for c in checks if c in self.modules})
        result = PhaseResult()
        for c in missing:
            result.outcomes[c] = "missing"
        if not files:
            return result
        with tempfile.TemporaryDirectory(prefix=f"ckms-breakage-{label}-") as tmp:
            out = Path(tmp) / "results.json"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                *files,
                "--rootdir",
                str(CHECKS_DIR),
                f"--ansible-inventory={self.inventory}",
                f"--ckms-only-checks={','.join(checks)}",
                f"--ckms-results={out}",
            ]
            start = time.monotonic()
            try:
                proc = subprocess.run(
                    cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                result.error = f"checks timed out after {CHECK_TIMEOUT_S} s"
                return result
            result.seconds = round(time.monotonic() - start, 1)
            if not out.exists():
                result.error = f"the checks did not run: {proc.stdout[-1500:]} {proc.stderr[-800:]}"
                return result
            records = json.loads(out.read_text())
        for c in checks:
            if c in missing:
                continue
            recs = [r for r in records if r["check"] == c]
            if not recs:
                result.outcomes[c] = "missing"
            elif any(r["outcome"] == "failed" for r in recs):
                result.outcomes[c] = "failed"
                result.messages[c] = next(r["message"] or "" for r in recs if r["outcome"] == "failed")
            elif all(r["outcome"] == "skipped" for r in recs):
                result.outcomes[c] = "skipped"
                result.messages[c] = recs[0]["message"] or ""
            else:
                result.outcomes[c] = "passed"
        return result

    # --- baseline ---------------------------------------------------------------------------------
    shared_baseline: PhaseResult | None = None

    def run_shared_baseline(self, checks: list[str]) -> PhaseResult:
        """One baseline run of every check the selected breaks use (``--shared-baseline``): saves a
        pytest start and the fixtures per break; each break then reads its checks' outcomes from it."""
        self.shared_baseline = self.run_checks(list(dict.fromkeys(checks)), "baseline")
        return self.shared_baseline

    def _baseline(self, checks: list[str]) -> PhaseResult:
        shared = self.shared_baseline
        if shared is None:
            return self.run_checks(checks, "baseline")
        return PhaseResult(
            outcomes={c: shared.outcomes.get(c, "missing") for c in checks},
            messages={c: shared.messages[c] for c in checks if c in shared.messages},
            seconds=0.0,
            error=shared.error,
        )

    # --- one break --------------------------------------------------------------------------------
    def run_break(self, brk: Break, item_checks: list[str]) -> BreakResult:
        res = BreakResult(brk.id, brk.item, brk.host, brk.what, list(brk.fails))
        start = time.monotonic()
        controls = [c for c in self.controls if not c.startswith(f"check:{brk.item}.")]
        # checks the catalog names that no host check module defines (drill records of tests/lab/drills,
        # or a check not written yet) cannot run here: listed in the result, not required to pass
        res.not_host_checks = [c for c in item_checks if c not in self.modules and c not in brk.fails]
        item_checks = [c for c in item_checks if c not in res.not_host_checks]
        checks = list(dict.fromkeys([*item_checks, *brk.fails, *controls]))
        try:
            self._run(brk, res, checks, controls)
        except Exception as exc:  # a lost SSH connection, a crashed probe: reported, the run goes on
            res.status = "error"
            res.problems.append(f"{type(exc).__name__}: {exc}")
            if not res.restored_ok and res.phases.get("break"):
                rc, out = self.shell(brk.host, brk.restore_cmd)
                res.problems.append(f"restore after error: rc={rc} {out[-300:]}")
        res.seconds = round(time.monotonic() - start, 1)
        return res

    def _run(self, brk: Break, res: BreakResult, checks: list[str], controls: list[str]) -> None:
        base = self._baseline(checks)
        res.phases["baseline"] = asdict(base)
        bad = {c: o for c, o in base.outcomes.items() if o != "passed"}
        must = set(brk.fails) | set(controls)
        if base.error or set(bad) & must:
            res.status = "baseline failing"
            res.problems.append(base.error or f"not passing before the break: {bad} {base.messages}")
            return
        # another check of the item failing already is reported, and no longer required after restore
        res.baseline_other_failing = {c: base.messages.get(c, o)[:300] for c, o in bad.items()}
        checks = [c for c in checks if c not in bad]
        rc, out = self.shell(brk.host, brk.break_cmd)
        res.phases["break"] = {"rc": rc, "output": out}
        if rc != 0:
            res.status = "error"
            res.problems.append(f"break command failed (rc={rc}): {out[-600:]}")
            self._restore(brk, res, checks)
            return
        if brk.settle_seconds:
            time.sleep(brk.settle_seconds)
        broken = self.run_checks(checks, "broken")
        res.phases["broken"] = asdict(broken)
        res.checks_failed = sorted(c for c, o in broken.outcomes.items() if o == "failed")
        res.messages = {c: broken.messages[c][:400] for c in res.checks_failed}
        if broken.error:
            res.problems.append(broken.error)
        for c in brk.fails:
            if broken.outcomes.get(c) != "failed":
                res.problems.append(f"{c} did not fail under the break ({broken.outcomes.get(c)})")
            elif not names_item(broken.messages.get(c), brk.item):
                res.problems.append(f"{c} failed without naming {brk.item}: {broken.messages.get(c)!r}")
        unspecific = [c for c in controls if broken.outcomes.get(c) != "passed"]
        if unspecific:
            res.problems.append(f"control checks of other items did not pass under the break: {unspecific}")
        status = "ok" if not res.problems else ("not specific" if unspecific else "not failed")
        self._restore(brk, res, checks)
        res.status = status if res.restored_ok else "restore failed"

    def _restore(self, brk: Break, res: BreakResult, checks: list[str]) -> None:
        rc, out = self.shell(brk.host, brk.restore_cmd)
        res.phases["restore"] = {"rc": rc, "output": out}
        if rc != 0:
            res.problems.append(f"restore command failed (rc={rc}): {out[-600:]}")
            return
        if brk.settle_seconds:
            time.sleep(brk.settle_seconds)
        again = self.run_checks(checks, "restored")
        res.phases["restored"] = asdict(again)
        bad = {c: o for c, o in again.outcomes.items() if o != "passed"}
        res.restored_ok = not bad and again.error is None
        if not res.restored_ok:
            res.problems.append(
                f"checks not passing after the restore: {again.error or bad} {again.messages}"
            )


# --- summary ---------------------------------------------------------------------------------------
def write_summary(results: list[BreakResult], out_dir: Path, uncovered: list[str]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = sum(r.status == "ok" for r in results)
    doc = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {
            "breaks": len(results),
            "ok": ok,
            "items": sorted({r.item for r in results}),
            "items_ok": sorted({r.item for r in results if r.status == "ok"}),
            "uncovered_items": uncovered,
        },
        "results": [asdict(r) for r in results],
    }
    json_path = out_dir / "breakage.json"
    json_path.write_text(json.dumps(doc, indent=1))
    lines = [
        "# Breakage run: A and E items",
        "",
        f"{doc['generated']}: {ok} of {len(results)} breaks failed exactly their checks and were restored.",
        "",
        "| item | break | status | checks failed | restored | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        failed = ", ".join(c.removeprefix("check:") for c in r.checks_failed) or "-"
        lines.append(
            f"| {r.item} | {r.id}: {r.what} | {r.status} | {failed} | "
            f"{'yes' if r.restored_ok else 'NO'} | {r.seconds:.0f} |"
        )
    problems = [r for r in results if r.problems]
    if problems:
        lines += ["", "## Problems", ""]
        for r in problems:
            lines.append(f"- **{r.item} {r.id}** ({r.status}): " + "; ".join(p[:500] for p in r.problems))
    if uncovered:
        lines += ["", f"Automated A/E items without a break: {', '.join(uncovered)}"]
    md_path = out_dir / "breakage.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    stack = os.environ.get("CKMS_LAB_STACK", "lab")
    parser = argparse.ArgumentParser(
        prog="python -m hardening.breakage.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--items", help="comma-separated item IDs (default: every item with a break)")
    parser.add_argument("--breaks", type=Path, default=BREAKS_FILE, help="the breakage catalog")
    parser.add_argument(
        "--inventory",
        type=Path,
        default=REPO_ROOT / "inventories" / stack / "generated" / "hosts.yml",
        help="Ansible inventory of the lab (default: the stack's generated hosts.yml)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "report" / "breakage")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument(
        "--shared-baseline",
        action="store_true",
        help="one baseline run of all the selected breaks' checks first, instead of one per break",
    )
    args = parser.parse_args(argv)

    catalog = load_catalog()
    breaks: BreakCatalog = load_breaks(args.breaks, catalog)
    items = {i.strip() for i in args.items.split(",") if i.strip()} if args.items else None
    selected = breaks.for_items(items)
    if items and (unknown := items - {b.item for b in selected}):
        print(f"breakage: no break for {sorted(unknown)}", file=sys.stderr)
        return 2
    if args.list:
        for b in selected:
            print(f"{b.item}  {b.id:40s} {b.host:8s} {b.what}")
        return 0
    # the same environment make report uses: the repository's ansible.cfg and the lab's vault password
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_ROOT / "ansible.cfg"))
    vault = Path.home() / ".cache" / "ckms" / "ansible" / "vault-pass"
    if vault.is_file():
        os.environ.setdefault("ANSIBLE_VAULT_PASSWORD_FILE", str(vault))
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if not args.inventory.exists():
        print(f"breakage: no inventory at {args.inventory} (is the lab up?)", file=sys.stderr)
        return 2
    from hardening.breakage.catalog import uncovered_items

    if not os.environ.get("CKMS_INVENTORY_RECORD"):
        # the A.32 check compares the live hosts with a system inventory taken for this run (as make report)
        inv_out = args.out / "inventory"
        collected = subprocess.run(
            [
                sys.executable,
                "-m",
                "hardening.inventory",
                "--inventory",
                str(args.inventory),
                "--out",
                str(inv_out),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if collected.returncode == 0 and (inv_out / "inventory.json").is_file():
            os.environ["CKMS_INVENTORY_RECORD"] = str(inv_out / "inventory.json")
        else:
            print(f"breakage: no system inventory collected: {collected.stderr[-500:]}", file=sys.stderr)

    runner = Runner(args.inventory, check_modules(), breaks.controls, breaks.prelude)
    results: list[BreakResult] = []
    if args.shared_baseline:
        wanted = [
            c
            for b in selected
            for c in [*catalog[b.item].all_checks(), *b.fails, *breaks.controls]
            if c in runner.modules
        ]
        print(f"breakage: shared baseline of {len(set(wanted))} checks", file=sys.stderr, flush=True)
        base = runner.run_shared_baseline(wanted)
        failing = {c: o for c, o in base.outcomes.items() if o != "passed"}
        print(
            f"breakage: baseline in {base.seconds:.0f} s" + (f"; not passing: {failing}" if failing else ""),
            file=sys.stderr,
            flush=True,
        )
    for n, brk in enumerate(selected, 1):
        print(f"breakage [{n}/{len(selected)}] {brk.item} {brk.id}: {brk.what}", file=sys.stderr, flush=True)
        res = runner.run_break(brk, list(catalog[brk.item].all_checks()))
        results.append(res)
        print(
            f"breakage   -> {res.status} in {res.seconds:.0f} s"
            + (f": {'; '.join(p[:300] for p in res.problems)}" if res.problems else ""),
            file=sys.stderr,
            flush=True,
        )
        write_summary(results, args.out, uncovered_items(breaks, catalog) if items is None else [])
    json_path, md_path = write_summary(
        results, args.out, uncovered_items(breaks, catalog) if items is None else []
    )
    bad = [r for r in results if r.status != "ok"]
    print(
        f"breakage: {len(results) - len(bad)}/{len(results)} ok; {md_path} {json_path}",
        file=sys.stderr,
    )
    return 1 if bad or (items is None and uncovered_items(breaks, catalog)) else 0


if __name__ == "__main__":
    sys.exit(main())
