# Sourced by scripts/lab-*.sh: environment for running the pinned Pulumi CLI against the local
# file backend with the per-machine passphrase. Builds the CLI first when it is not cached.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
export CKMS_TOOL_CACHE=$cache
stack=${CKMS_LAB_STACK:-lab}
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
