#!/usr/bin/env bash
# Lint the Python side: ruff (rules in pyproject [tool.ruff]) and its formatter over the repository, and
# mypy in strict mode (no untyped definitions, [tool.mypy]) over the CA package ckms_app.
# Exit status non-zero on any finding. Env: CKMS_VENV (default .venv).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
log() { echo "lint-python: $*" >&2; }
for tool in ruff mypy; do
  [ -x "$venv/bin/$tool" ] || { log "no $tool in $venv (pip install the dev extra: .[dev])"; exit 1; }
done
cd "$repo"
rc=0
log "ruff check"
"$venv/bin/ruff" check --no-cache . || rc=1
log "ruff format --check"
"$venv/bin/ruff" format --no-cache --check . || rc=1
log "mypy --strict ckms_app"
"$venv/bin/mypy" --no-incremental || rc=1
[ "$rc" -eq 0 ] && log "clean" || log "findings above"
exit "$rc"
