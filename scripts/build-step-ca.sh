#!/usr/bin/env bash
# Build the pinned step-ca (smallstep/certificates) from its Go module into the per-machine cache,
# for `make bench-peer` (ckms_lab.bench_peer: the same issuance load against ckms and step-ca).
#
# Why build: step-ca has no Debian package and no prebuilt binary can be downloaded here, but the Go
# module proxy serves github.com/smallstep/certificates. CGO is on because its PKCS#11 KMS (the CA key
# in SoftHSM2, as for ckms) is a cgo package; its PIV/YubiKey dependency needs libpcsclite-dev.
# -mod=mod: `go install pkg@version` resolves the module's own go.mod/go.sum at that version.
#
# Idempotent: reuses $CKMS_TOOL_CACHE/step-ca/<version>/step-ca when the stamp matches the build
# inputs (version, Go version, flags); a cold build takes several minutes on 2 cores.
# Env: CKMS_TOOL_CACHE (default ~/.cache/ckms), STEP_CA_VERSION (default v0.30.2).
# Prints the binary's path on stdout.
set -euo pipefail

version=${STEP_CA_VERSION:-v0.30.2}
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
root=$cache/step-ca/$version
bin=$root/step-ca
stamp=$root/.build-stamp
module=github.com/smallstep/certificates/cmd/step-ca
ldflags="-s -w -X main.Version=${version#v}"   # else it reports itself as 0000000-dev

log() { echo "build-step-ca: $*" >&2; }

command -v go >/dev/null || { log "'go' not found; install Go >= 1.26"; exit 1; }
want=$(printf '%s\n%s\n%s\n' "$module@$version" "$(go env GOVERSION)" "cgo -mod=mod -trimpath $ldflags" | sha256sum | cut -d' ' -f1)

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "cached $bin"
  echo "$bin"
  exit 0
fi

# Build dependencies: a C compiler for cgo and the PC/SC headers (PIV KMS, compiled in).
if ! dpkg-query -W -f='${Status}' libpcsclite-dev 2>/dev/null | grep -q "install ok installed"; then
  log "installing libpcsclite-dev"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpcsclite-dev >&2
fi
command -v gcc >/dev/null || { log "gcc not found (cgo needs it): apt-get install build-essential"; exit 1; }

mkdir -p "$root"
gobin=$(mktemp -d "$root/.gobin.XXXXXX")
trap 'rm -rf "$gobin"' EXIT
log "building $module@$version (first time: several minutes)"
start=$(date +%s)
GOBIN=$gobin CGO_ENABLED=1 GOFLAGS="-buildvcs=false -mod=mod" \
  go install -trimpath -ldflags="$ldflags" "$module@$version" >&2
"$gobin/step-ca" version >/dev/null   # smoke test: the binary runs
mv -f "$gobin/step-ca" "$bin"          # atomic replace
echo "$want" >"$stamp"
log "built $bin in $(($(date +%s) - start)) s"
echo "$bin"
