#!/usr/bin/env bash
# make lab-up: build what is missing (Pulumi CLI, golden image), `pulumi up` the lab stack, write the
# Ansible inventory to inventories/<stack>/generated/. Idempotent: a second run changes nothing.
set -euo pipefail
start=$(date +%s)
# First run on a machine: the golden image (mostly download) builds while Go compiles the CLI.
golden_log=$(mktemp)
"$(dirname "$0")/build-golden-image.sh" >/dev/null 2>"$golden_log" &
golden_pid=$!
source "$(dirname "$0")/lab-env.sh"
if ! wait "$golden_pid"; then cat "$golden_log" >&2; rm -f "$golden_log"; exit 1; fi
cat "$golden_log" >&2; rm -f "$golden_log"
# A stack with ckms:caHost vm (make lab LAB_CA=vm) boots its CA hosts from the VM disk (cached).
if grep -q '^ *ckms:caHost: *vm' "$repo/pulumi/stacks/$stack.yaml" 2>/dev/null; then
  "$repo/scripts/build-vm-image.sh" >/dev/null
fi
"$venv/bin/python" -c 'from ckms_lab import paths; paths.ssh_key()'   # per-machine controller key
cd "$repo/pulumi"
stack_ready
log "pulumi up ($stack)"
pulumi up --yes --skip-preview --refresh --non-interactive --suppress-progress --stack "$stack" \
  --config-file "$stack_config"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
pulumi stack output --json --show-secrets --stack "$stack" >"$out"
inv=$("$venv/bin/python" -m ckms_lab.inventory "$out" "$repo/inventories/$stack/generated")
log "inventory: $inv"
log "up in $(( $(date +%s) - start )) s"
