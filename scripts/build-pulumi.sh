#!/usr/bin/env bash
# Build the pinned Pulumi CLI from its Go module into the per-machine cache, plus the two small
# launchers the lab needs, and generate the per-machine passphrase for the local secrets provider.
#
# Why build: no prebuilt Pulumi binary can be downloaded on these machines, but the Go module proxy
# serves github.com/pulumi/pulumi/pkg/v3. `go install pkg@version` refuses modules whose go.mod has
# `replace` lines, so we build from a tiny wrapper module that requires pkg+sdk at one release and
# repeats pkg's third-party `replace` line.
#
# Why a Python language host launcher: the Go module of Pulumi's Python language host
# (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is not served by the module proxy
# here (403 "This module version is not available" for every version), so `pulumi-language-python`
# is a launcher for ckms_lab.langhost, which serves Pulumi's LanguageRuntime gRPC API with the
# Pulumi Python SDK's own language server (the one the Automation API uses for inline programs).
#
# Idempotent: reuses ${CACHE}/pulumi/<version>/bin when the stamp matches this script.
# Usage: scripts/build-pulumi.sh [VENV]   (prints the bin directory on stdout)
set -euo pipefail

PULUMI_VERSION=${PULUMI_VERSION:-3.274.1}
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "${1:-$repo/.venv}" && pwd)
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
root=$cache/pulumi/$PULUMI_VERSION
bin=$root/bin
stamp=$root/.build-stamp
ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
gomod=$(cat <<EOF
module ckms.invalid/pulumi-build

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_VERSION
)

// Repeated from pkg/v3's go.mod (replace lines of dependencies are ignored by Go).
replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
)
# The stamp covers the build inputs only, so editing the launchers below does not rebuild the CLI.
want=$(printf '%s\n%s\n' "$gomod" "$ldflags" | sha256sum | cut -d' ' -f1)

log() { echo "build-pulumi: $*" >&2; }

mkdir -p "$bin"
chmod 700 "$cache" 2>/dev/null || true

if [ -x "$bin/pulumi" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "cached $bin/pulumi"
else
  command -v go >/dev/null || { log "go toolchain not found (need Go >= 1.26)"; exit 1; }
  work=$root/src
  rm -rf "$work" && mkdir -p "$work"
  printf '%s\n' "$gomod" >"$work/go.mod"
  log "resolving modules for pulumi v$PULUMI_VERSION (first time: several minutes)"
  (cd "$work" && GOFLAGS=-buildvcs=false go get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$PULUMI_VERSION" >&2)
  log "building pulumi v$PULUMI_VERSION"
  start=$(date +%s)
  (cd "$work" && GOFLAGS=-buildvcs=false CGO_ENABLED=0 go build -trimpath \
      -ldflags "$ldflags" \
      -o "$bin/pulumi.new" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi >&2)
  mv -f "$bin/pulumi.new" "$bin/pulumi"
  log "built in $(( $(date +%s) - start )) s"
  echo "$want" >"$stamp"
fi

# Launchers: always rewritten (cheap) so they point at this checkout's venv.
cat >"$bin/pulumi-language-python.new" <<EOF
#!/bin/sh
# Pulumi language host for Python (see scripts/build-pulumi.sh for why this is not the Go binary).
# CKMS_VENV (exported by scripts/lab-env.sh) wins, so two checkouts can share this cache.
exec "\${CKMS_VENV:-$venv}/bin/python" -m ckms_lab.langhost "\$@"
EOF
cat >"$bin/pulumi-resource-pulumi-python.new" <<EOF
#!/bin/sh
# Launcher for Pulumi Python dynamic providers (as in Pulumi's own distribution).
exec "\${CKMS_VENV:-$venv}/bin/python" -u -m pulumi.dynamic "\$@"
EOF
for f in pulumi-language-python pulumi-resource-pulumi-python; do
  chmod 755 "$bin/$f.new" && mv -f "$bin/$f.new" "$bin/$f"
done

# Per-machine passphrase for the passphrase secrets provider: random, 0600, never committed.
pass=$cache/pulumi/passphrase
if [ ! -s "$pass" ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 >"$pass.new" && mv -f "$pass.new" "$pass")
fi
chmod 600 "$pass"

echo "$bin"
