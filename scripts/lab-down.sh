#!/usr/bin/env bash
# make lab-down: `pulumi destroy` the lab stack, then make sure nothing of the lab is left on the
# machine (a destroy after a lost state or a crashed run still cleans up through the host driver).
set -euo pipefail
source "$(dirname "$0")/lab-env.sh"
cd "$repo/pulumi"
if pulumi stack select "$stack" --non-interactive >/dev/null 2>&1; then
  stack_ready
  log "pulumi destroy ($stack)"
  pulumi destroy --yes --skip-preview --non-interactive --suppress-progress --stack "$stack" \
    --config-file "$stack_config"
fi
"$venv/bin/python" -m ckms_lab.hosts destroy --lab "$lab" --all
rm -rf "$repo/inventories/$stack/generated"
left=$("$venv/bin/python" -m ckms_lab.hosts footprint --lab "$lab")
if "$venv/bin/python" -c 'import json,sys; sys.exit(any(json.loads(sys.argv[1]).values()))' "$left"; then
  log "down: nothing of lab '$lab' left"
else
  log "left behind: $left"
  exit 1
fi
