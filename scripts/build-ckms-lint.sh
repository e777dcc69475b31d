#!/usr/bin/env bash
# Build the zlint-based pre-issuance linter (tools/ckms-lint) into the per-machine tool cache.
#
# Why a cache and a stamp: `make test` runs this on every invocation, and a Go build of zlint
# costs tens of seconds cold. The stamp records a hash of go.mod, go.sum and main.go (and the
# Go version); when it matches and the binary exists, nothing is built and one line is printed.
# Module versions are exactly those pinned in go.mod/go.sum (-mod=readonly: never re-resolved).
#
# Env: CKMS_TOOL_CACHE (default ~/.cache/ckms) -> binary at $CKMS_TOOL_CACHE/bin/ckms-lint.
set -euo pipefail
src="$(cd "$(dirname "$0")/../tools/ckms-lint" && pwd)"
cache="${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}"
bin="$cache/bin/ckms-lint"
stamp="$cache/bin/ckms-lint.stamp"

command -v go >/dev/null || { echo "build-ckms-lint: 'go' not found; install Go >= 1.26" >&2; exit 1; }
want="$( { cat "$src/go.mod" "$src/go.sum" "$src"/*.go; go env GOVERSION; } | sha256sum | cut -d' ' -f1)"

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "ckms-lint: up to date ($bin)"
  exit 0
fi

mkdir -p "$cache/bin"
tmp="$(mktemp "$cache/bin/.ckms-lint.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "ckms-lint: building $bin"
# -trimpath: reproducible paths; CGO off: a static binary that runs in the sandboxed daemon unit.
(cd "$src" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=readonly" \
  go build -trimpath -ldflags='-s -w' -o "$tmp" .)
"$tmp" -list >/dev/null   # smoke test: the binary runs and its lint registry loads
mv -f "$tmp" "$bin"        # atomic replace: a running daemon keeps its old inode
echo "$want" >"$stamp"
