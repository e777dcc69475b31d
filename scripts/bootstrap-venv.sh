#!/usr/bin/env bash
# Create the project venv and install ckms with its pinned dependencies (editable).
# Idempotent: pip leaves satisfied pins alone.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q -e ".[dev,infra,postgresql]"
