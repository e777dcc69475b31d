"""The package layout keeps its promises (docs/architecture.md): layers import only downwards, there is no
import cycle, modules stay small, and exactly one place asks the HSM to sign a certificate or a CRL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ckms_app"
MAX_LINES = 400
LONG_REASON = "Why this module is long:"

# What each layer may import (besides itself). Lower layers never import upper ones.
# i18n (message catalogs) sits beside errors at the bottom: it imports nothing of ckms_app.
ALLOWED = {
    "errors": set(),
    "i18n": set(),
    # per-stage CPU counters for the benchmark: the standard library only
    "cpu_stages": set(),
    "algorithms": {"errors", "i18n"},
    "config": {"errors", "i18n", "algorithms"},
    "x509": {"errors", "i18n", "algorithms", "config"},
    "hsm": {"errors", "i18n", "algorithms", "config"},
    "store": {"errors", "i18n", "algorithms", "config"},
    "audit": {"errors", "i18n", "algorithms", "config", "x509", "hsm", "store"},
    "authority": {"errors", "i18n", "algorithms", "config", "x509", "hsm", "store", "audit", "cpu_stages"},
    "daemon": {
        "errors",
        "i18n",
        "algorithms",
        "config",
        "x509",
        "hsm",
        "store",
        "audit",
        "authority",
        "cpu_stages",
    },  # fmt: skip
    # the IoT hub and the relay: the daemon's TLS restriction, nothing of the CA's state
    "hub": {"errors", "i18n", "algorithms", "config", "daemon"},
    # signed report bundles and attestations: the audit key and the trail, as the CA's own commands
    "reporting": {"errors", "i18n", "algorithms", "config", "x509", "hsm", "store", "audit", "authority"},
    "cli": {
        "errors",
        "i18n",
        "algorithms",
        "config",
        "x509",
        "hsm",
        "store",
        "audit",
        "authority",
        "daemon",
        "hub",
        "reporting",
    },  # fmt: skip
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ckms_app module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from ckms_app.hsm import admin" imports the module ckms_app.hsm.admin
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; ckms_app uses absolute imports")
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "ckms_app")
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {i for i in imports_of(path, known) if i != name} for name, path in mods.items()}


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, deps in graph().items():
        own = layer(module)
        if own == "__init__":
            continue
        for dep in deps:
            other = layer(dep)
            if other != own and other != "__init__" and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {dep} ({own} may not import {other})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    # Tarjan's strongly connected components; any component larger than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The two tests above can fail: a function-level import is seen."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from ckms_app.daemon import server\n")
    assert "ckms_app.daemon.server" in imports_of(a, {"ckms_app.daemon.server"})
    assert imports_of(a, set()) == {"ckms_app.daemon"}


def test_modules_are_small_or_say_why() -> None:
    long = []
    for module, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{module}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines without '{LONG_REASON}' in their docstring: {long}"


def test_lab_and_bench_code_is_not_in_the_ca_package() -> None:
    names = {p.stem for p in PACKAGE.rglob("*.py")}
    assert not names & {"bench", "multinode", "throwaway_postgres", "provider", "hosts", "langhost"}


HSM_SIGN = re.compile(r"\.sign\(\s*(digest|tbs|to_be_signed)\b|\bsign_digest\(|mechanism=Mechanism\.ECDSA")


def test_one_place_asks_the_ca_key_to_sign() -> None:
    """Certificates and CRLs are signed by the HSM in authority/signer.py only; the token's raw ECDSA call
    sits in hsm/token.py (the signer's key) and hsm/admin.py (the custody ceremony's own KWK checks)."""
    callers = {}
    for module, path in modules().items():
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if HSM_SIGN.search(line)]
        if hits:
            callers[module] = hits
    signer_calls = {m for m in callers if m not in ("ckms_app.hsm.token", "ckms_app.hsm.admin")}
    assert signer_calls == {"ckms_app.authority.signer"}, callers


def test_audit_records_are_built_in_one_place() -> None:
    """Every audit record is made by ckms_app.audit.record (event/record/record_now): the low-level row
    builder of the hash chain is called nowhere else."""
    callers = {m for m, path in modules().items() if re.search(r"\baudit_row\(", path.read_text())}
    assert callers <= {"ckms_app.store.chain", "ckms_app.audit.record"}, callers


def test_error_classes_live_in_errors_py() -> None:
    """Every exception ckms raises is defined in ckms_app/errors.py (private control-flow ones aside)."""
    outside = []
    for module, path in modules().items():
        if module == "ckms_app.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if any(
                    b.endswith(("Error", "Exception"))
                    or b
                    in {
                        "NotAuthorized",
                        "NotAuthenticated",
                        "NotFound",
                        "Conflict",
                        "CsrRejected",
                        "LintFailed",
                        "ServiceUnavailable",
                    }
                    for b in bases
                ):
                    outside.append(f"{module}.{node.name}")
    assert not outside, outside
