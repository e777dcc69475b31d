#!/usr/bin/env bash
# Create the project venv and install ckms with its pinned dependencies (editable).
# Idempotent: pip leaves satisfied pins alone.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q -e ".[dev,infra,postgresql,lint]"
# The lab/dev package (ckms_lab: lab hosts, Pulumi provider, bench, multinode) is not part of the ckms
# distribution, so the CA wheel never carries it; the dev venv finds it in this checkout.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$(pwd)/ckms_lab" "$site/ckms_lab"
