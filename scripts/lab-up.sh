#!/usr/bin/env bash
# make lab-up: build what is missing (Pulumi CLI, golden image), `pulumi up` the lab stack, write the
# Ansible inventory to inventories/<stack>/generated/. Idempotent: a second run changes nothing.
set -euo pipefail
source "$(dirname "$0")/lab-env.sh"
start=$(date +%s)
"$repo/scripts/build-golden-image.sh" >/dev/null
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
