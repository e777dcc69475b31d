# Sourced by scripts/lab-*.sh: environment for running the pinned Pulumi CLI against the local
# file backend with the per-machine passphrase. Builds the CLI first when it is not cached.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
export CKMS_VENV=$venv
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
export CKMS_TOOL_CACHE=$cache
stack=${CKMS_LAB_STACK:-lab}
# The lab's host names come from the stack's ckms:labName (as in pulumi/ckms_env/program.py), so
# CKMS_LAB_STACK=<stack> alone names that stack's hosts (lab-down never touches another lab's).
lab=${CKMS_LAB_NAME:-$("$venv/bin/python" -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
print((doc.get("config") or {}).get("ckms:labName") or "lab")' "$repo/pulumi/stacks/$stack.yaml" 2>/dev/null || echo lab)}
pulumi_bin=$("$repo/scripts/build-pulumi.sh" "$venv")
export PATH="$pulumi_bin:$venv/bin:$PATH"
export PULUMI_HOME=$cache/pulumi/home
export PULUMI_BACKEND_URL=file://$repo/pulumi/.state
export PULUMI_CONFIG_PASSPHRASE_FILE=$cache/pulumi/passphrase
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DIY_BACKEND_NO_LEGACY_WARNING=true
mkdir -p "$repo/pulumi/.state" "$PULUMI_HOME"
chmod 700 "$repo/pulumi/.state"
log() { echo "lab: $*" >&2; }

# Stack configuration: committed in pulumi/stacks/<stack>.yaml (no secrets, no salt); the working
# copy the CLI reads and writes (it adds the per-machine encryption salt) is
# pulumi/.state/config/Pulumi.<stack>.yaml, passed with --config-file, so the tree stays clean.
stack_config=$repo/pulumi/.state/config/Pulumi.$stack.yaml
stack_ready() {
  [ -f "$repo/pulumi/stacks/$stack.yaml" ] || { log "no pulumi/stacks/$stack.yaml"; return 1; }
  mkdir -p "$(dirname "$stack_config")"
  if ! (cd "$repo/pulumi" && pulumi stack select "$stack" --non-interactive >/dev/null 2>&1); then
    (cd "$repo/pulumi" && pulumi stack init "$stack" --secrets-provider passphrase --non-interactive >/dev/null)
    # init wrote the salt next to Pulumi.yaml: move it to the working copy.
    mv -f "$repo/pulumi/Pulumi.$stack.yaml" "$stack_config"
  fi
  "$venv/bin/python" - "$repo/pulumi/stacks/$stack.yaml" "$stack_config" <<'PY'
import sys, yaml
from pathlib import Path
committed, working = Path(sys.argv[1]), Path(sys.argv[2])
doc = yaml.safe_load(committed.read_text()) or {}
old = yaml.safe_load(working.read_text()) if working.exists() else None
if old and old.get("encryptionsalt"):
    doc["encryptionsalt"] = old["encryptionsalt"]
working.write_text(yaml.safe_dump(doc, sort_keys=False))
working.chmod(0o600)
PY
}
