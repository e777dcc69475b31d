#!/usr/bin/env bash
# Build the offline wheelhouse the ckms_ca role installs the CA daemon from (build/wheelhouse).
#
# Why a wheelhouse: a CA server is air-gapped (and pip inside lab hosts fails TLS), so every wheel the
# daemon needs is built on the controller from the versions pinned in pyproject.toml and copied to the
# host, which installs with `pip install --no-index --find-links` into /opt/ckms/venv. pip itself is in
# the wheelhouse too: Debian's python3 has no ensurepip, so the host creates the venv --without-pip and
# runs pip from its wheel.
#
# Cached: the dependency wheels are rebuilt only when the pinned dependencies (or the Python ABI) change;
# the ckms wheel only when the package sources change. Prints the wheelhouse directory on stdout.
# The ckms wheel is built from the committed tree (git HEAD), so what a host runs is reproducible and
# never someone's uncommitted work; CKMS_WHEEL_SOURCE=worktree builds from the working tree instead.
# Env: CKMS_VENV (default .venv), CKMS_WHEELHOUSE (default build/wheelhouse), CKMS_WHEEL_SOURCE (head|worktree).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
out=${CKMS_WHEELHOUSE:-$repo/build/wheelhouse}
py=$venv/bin/python
log() { echo "build-wheelhouse: $*" >&2; }
[ -x "$py" ] || { log "no venv at $venv (run make deps)"; exit 1; }
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

abi=$("$py" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())')
deps=$("$py" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
)
pip_pin=$("$py" -m pip --version | awk '{print $2}')
dep_want=$(printf '%s\n%s\npip==%s\n' "$abi" "$deps" "$pip_pin" | sha256sum | cut -d' ' -f1)
source_kind=${CKMS_WHEEL_SOURCE:-head}
paths=(pyproject.toml README.md ckms_app)
if [ "$source_kind" = head ] && git -C "$repo" rev-parse --verify -q HEAD >/dev/null; then
  src_want=head-$(git -C "$repo" rev-parse "HEAD:ckms_app" "HEAD:pyproject.toml" | sha256sum | cut -d' ' -f1)
  export_tree() { git -C "$repo" archive HEAD "${paths[@]}" | tar xf - -C "$1"; }
else
  src_want=tree-$( (cd "$repo" && find ckms_app -name '*.py' -o -name py.typed -o -name '*.po' -o -name '*.mo' | sort | xargs cat pyproject.toml) \
    | sha256sum | cut -d' ' -f1)
  export_tree() { (cd "$repo" && tar cf - "${paths[@]}") | tar xf - -C "$1"; }
fi

start=$(date +%s)
if [ "$(cat "$out/.deps-stamp" 2>/dev/null)" != "$dep_want" ]; then
  log "building dependency wheels ($abi)"
  find "$out" -maxdepth 1 -name '*.whl' -delete
  req=$(mktemp); trap 'rm -f "$req"' EXIT
  printf '%s\npip==%s\nsetuptools\nwheel\n' "$deps" "$pip_pin" >"$req"
  "$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$out" -r "$req" >&2
  echo "$dep_want" >"$out/.deps-stamp"
  rm -f "$out/.src-stamp"
fi
if [ "$(cat "$out/.src-stamp" 2>/dev/null)" != "$src_want" ]; then
  log "building the ckms wheel (from ${src_want%%-*})"
  find "$out" -maxdepth 1 -name 'ckms-*.whl' -delete
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  # Build from a copy so no build/ or egg-info of the wheel build lands in the working tree.
  export_tree "$tmp"
  "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-index --find-links "$out" \
    --wheel-dir "$out" "$tmp" >&2
  echo "$src_want" >"$out/.src-stamp"
  log "built in $(( $(date +%s) - start )) s"
else
  log "cached $out"
fi
echo "$out"
