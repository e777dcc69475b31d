#!/usr/bin/env bash
# Run every drill against one lab, one after the other (they share the hosts), then print the report
# summary. Usage: tests/lab/drills/run_all.sh [--inventory INV] [--results FILE] [extra args per drill]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
py=${CKMS_PYTHON:-$repo/.venv/bin/python}
rc=0
# rollover last: it leaves the CA on a new key (the report's checks then run against a rolled-over CA)
for d in flows dos router_compromise time_source power hsm rollover; do
  echo "== drill $d"
  "$py" "$here/$d.py" "$@" || rc=1
done
exit $rc
