#!/usr/bin/env bash
# make report: run the hardening checks (hardening/checks, testinfra over SSH) against an inventory and
# render the per-item report (HTML, JSON, JUnit, Markdown) into build/report.
#   CKMS_INVENTORY   inventory file (default: inventories/$CKMS_LAB_STACK/generated/hosts.yml, stack lab)
#   LANG_REPORT      ja | en (default en)
#   REPORT_OUT       output directory (default build/report)
#   CKMS_DRILL_RESULTS  drill records to include (default $REPORT_OUT/drills.json, when present)
# Each check module names its hosts (testinfra_hosts: ca, router), so no --hosts here.
# Exit status: that of the checks (the report is written either way).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
stack=${CKMS_LAB_STACK:-lab}
inv=${CKMS_INVENTORY:-$repo/inventories/$stack/generated/hosts.yml}
out=${REPORT_OUT:-$repo/build/report}
lang=${LANG_REPORT:-en}
log() { echo "report: $*" >&2; }
[ -f "$inv" ] || { log "no inventory at $inv (make lab-up, or set CKMS_INVENTORY)"; exit 1; }
export PATH="$venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg"
[ -s "$cache/ansible/vault-pass" ] && export ANSIBLE_VAULT_PASSWORD_FILE=${ANSIBLE_VAULT_PASSWORD_FILE:-$cache/ansible/vault-pass}
mkdir -p "$out"
start=$(date +%s)
rc=0
# A run of its own unless the caller (lab-converge.sh) started one: see hardening/provenance.py.
if [ -z "${CKMS_RUN_ID:-}" ]; then
  eval "$(cd "$repo" && python -m hardening.provenance start --out "$out" --inventory "$inv" --command "scripts/report.sh")"
  export CKMS_RUN_ID
fi
# The system inventory (A.32) is collected first; the checks compare it with the live hosts.
(cd "$repo" && python -m hardening.inventory --inventory "$inv" --out "$out/inventory") || rc=$?
export CKMS_INVENTORY_RECORD="$out/inventory/inventory.json"
# The public baseline (OpenSCAP ANSSI BP-028 high, F.06 l) is one of the checks: a lab host on this
# controller is evaluated by the check itself (~5 s per host, read-only), any other host's summary is read
# from here (make baseline, OPENSCAP_OUT). Collected by name pattern: a file named beside its directory
# would be dropped as a duplicate of it.
export OPENSCAP_OUT=${OPENSCAP_OUT:-$out/openscap}
(cd "$repo" && pytest -q -p no:cacheprovider -o "python_files=test_*.py *_check.py" hardening/checks --rootdir "$repo/hardening/checks" \
   --ansible-inventory "$inv" --ckms-results "$out/results.json" \
   --junitxml "$out/checks-junit.xml") || rc=$?
# Drill records (tests/lab/drills, CKMS_DRILL_RESULTS) join the report when a drill run wrote them.
drills=${CKMS_DRILL_RESULTS:-$out/drills.json}
extra=(); [ -s "$drills" ] && extra=(--results "$drills")
(cd "$repo" && python -m hardening.report --results "$out/results.json" "${extra[@]}" --out "$out" --lang "$lang" \
   --inventory "$CKMS_INVENTORY_RECORD" --openscap "$out/openscap" --pdf "$out/report.pdf")
log "checks exit $rc; report in $out ($(( $(date +%s) - start )) s)"
ls "$out" >&2
exit $rc
