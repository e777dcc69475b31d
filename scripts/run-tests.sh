#!/usr/bin/env bash
# make test: the whole suite in two streams that share the machine.
#
# Why two streams: the suite's long part is lab work (converges, Molecule scenarios), which leaves about
# half of a 2-core machine idle while Ansible waits on SSH and the hosts. Run one after the other, the
# suite took ~65 min; side by side, the lab that `make lab` builds (with the unit, integration and fuzz
# tests) and the labs of their own (Molecule scenarios, the production-shaped converge) finish together.
# Each stream's labs have their own names and networks (tests/lab: labtest 10.232, prodshape 10.234,
# Molecule 10.236/10.237/10.239, collection 10.241), so nothing is shared but read-only caches, which
# are built here first, one at a time.
#
#   stream 1 (this terminal): tests/ except the files below
#   stream 2 (log, printed when both are done): STREAM2_FILES
# Exit status: non-zero when either stream failed. CKMS_TEST_SERIAL=1 runs one pytest over tests/ instead.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
pytest=("$venv/bin/pytest" -q --durations=25)
cd "$repo"

STREAM2_FILES=(
  tests/lab/test_molecule_driver.py
  tests/lab/test_molecule_roles_ca.py
  tests/lab/test_molecule_roles_hardening.py
  tests/lab/test_molecule_roles_perimeter.py
  tests/lab/test_production_path.py
)

if [ "${CKMS_TEST_SERIAL:-0}" = 1 ]; then
  exec "${pytest[@]}" tests
fi

# Machine-wide caches both streams read (each script is idempotent and returns at once when cached).
# Only where lab hosts can run (the lab tests skip themselves elsewhere).
if [ "$(id -u)" = 0 ] && command -v systemd-nspawn >/dev/null && command -v go >/dev/null; then
  start=$(date +%s)
  scripts/build-golden-image.sh >/dev/null || exit 1
  scripts/build-pulumi.sh "$venv" >/dev/null || exit 1
  scripts/build-wheelhouse.sh >/dev/null || exit 1
  scripts/build-collection.sh >/dev/null || exit 1
  "$venv/bin/python" -c 'from ckms_lab import paths; paths.ssh_key()' || exit 1
  echo "run-tests: caches ready in $(( $(date +%s) - start )) s"
fi

logs=$repo/build/test-logs
mkdir -p "$logs"
stream2_log=$logs/stream2.log
ignore=()
for f in "${STREAM2_FILES[@]}"; do ignore+=(--ignore "$f"); done

start=$(date +%s)
"${pytest[@]}" "${STREAM2_FILES[@]}" >"$stream2_log" 2>&1 &
stream2=$!
trap 'kill -- "$stream2" 2>/dev/null' INT TERM
echo "run-tests: stream 2 (${STREAM2_FILES[*]##*/}) in the background, log $stream2_log"
echo "run-tests: stream 1 (tests/ without those files)"
"${pytest[@]}" tests "${ignore[@]}"
rc1=$?
echo "run-tests: stream 1 exit $rc1 after $(( $(date +%s) - start )) s; waiting for stream 2"
wait "$stream2"
rc2=$?
echo
echo "================ stream 2: ${STREAM2_FILES[*]} ================"
cat "$stream2_log"
echo "run-tests: stream 1 exit $rc1, stream 2 exit $rc2, $(( $(date +%s) - start )) s in all"
[ "$rc1" = 0 ] && [ "$rc2" = 0 ]
