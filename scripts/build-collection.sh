#!/usr/bin/env bash
# Build the Ansible collection ckms.ca from the roles into build/collection/ckms-ca-<version>.tar.gz.
#
# Why assembled: the roles stay in roles/, where the playbooks in ansible/ and the Molecule scenarios use
# them in place; the collection tree (build/collection/tree/ansible_collections/ckms/ca) is made from
# collection/ (galaxy.yml, README.md, meta/runtime.yml) plus roles/ without each role's molecule/ (its
# tests link the repository's hardening checks and lab driver, which do not belong in the collection).
# Nothing inside a role refers to a path outside it, so the roles work unchanged as ckms.ca.<role>.
#
# Cached: rebuilt only when an input (collection/, roles/ outside molecule/, this script) changes.
# Prints the tarball path on stdout. Env: CKMS_VENV (default .venv), CKMS_COLLECTION_OUT (default build/collection).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
out=${CKMS_COLLECTION_OUT:-$repo/build/collection}
log() { echo "build-collection: $*" >&2; }
[ -x "$venv/bin/ansible-galaxy" ] || { log "no ansible-galaxy in $venv (run make deps)"; exit 1; }
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

version=$("$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' \
          "$repo/collection/galaxy.yml")
tarball=$out/ckms-ca-$version.tar.gz
inputs() {
  (cd "$repo" && find collection roles scripts/build-collection.sh -path 'roles/*/molecule' -prune \
     -o -name __pycache__ -prune -o \( -type f -o -type l \) -print | LC_ALL=C sort | xargs sha256sum)
}
want=$(inputs | sha256sum | cut -d' ' -f1)
if [ -f "$tarball" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$want" ]; then
  log "up to date"
  echo "$tarball"
  exit 0
fi

tree=$out/tree/ansible_collections/ckms/ca
rm -rf "$out/tree" "$out/.stamp"
mkdir -p "$tree/roles"
cp -a "$repo/collection/." "$tree/"
(cd "$repo/roles" && tar cf - --exclude='./*/molecule' --exclude=__pycache__ --exclude='*.pyc' .) | tar xf - -C "$tree/roles"
if [ -n "$(find "$tree" -type l)" ]; then
  log "symbolic links in the collection tree: $(find "$tree" -type l | tr '\n' ' ')"; exit 1
fi
rm -f "$out"/ckms-ca-*.tar.gz
"$venv/bin/ansible-galaxy" collection build "$tree" --output-path "$out" --force >&2
[ -f "$tarball" ] || { log "ansible-galaxy did not write $tarball"; exit 1; }
echo "$want" > "$out/.stamp"
log "built $tarball"
echo "$tarball"
