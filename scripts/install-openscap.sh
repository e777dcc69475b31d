#!/usr/bin/env bash
# Install OpenSCAP (openscap-scanner, openscap-utils) and the Debian 12 SCAP content that the public
# baseline is evaluated against; print the path of the datastream. Idempotent and cached:
#  - the two Debian packages are installed only when missing (as scripts/bootstrap-host.sh does);
#  - the ComplianceAsCode content for Debian 12 (ssg-debian12-ds.xml) ships only in the ssg-debian package
#    of Debian 13 (bookworm's ssg-debian stops at Debian 11), so the pinned .deb is fetched once from that
#    suite with a private apt state (the machine's sources are not touched) and unpacked into
#    $CKMS_TOOL_CACHE/openscap/ssg-debian-<version>/;
#  - the content's published defects listed in hardening/openscap_content_patches.yml are corrected in a copy,
#    ssg-debian12-ds.ckms.xml (rebuilt when that list changes), which is the datastream printed and evaluated.
# Env: CKMS_TOOL_CACHE (default ~/.cache/ckms), SSG_VERSION (default below), SSG_SUITE (default trixie).
set -euo pipefail
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
version=${SSG_VERSION:-0.1.76-1}
suite=${SSG_SUITE:-trixie}
mirror=${SSG_MIRROR:-http://deb.debian.org/debian}
dest=$cache/openscap/ssg-debian-$version
ds=$dest/ssg-debian12-ds.xml
log() { echo "install-openscap: $*" >&2; }

missing=()
for p in openscap-scanner openscap-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -s "$ds" ]; then
  log "fetching ssg-debian $version ($suite) into $dest"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$tmp/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
            -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root
            -o Acquire::Languages=none)
  apt-get "${apt_opts[@]}" update -qq || apt-get "${apt_opts[@]}" update -qq
  (cd "$tmp" && { apt-get "${apt_opts[@]}" download "ssg-debian=$version" -qq ||
    { log "ssg-debian $version not in $suite any more; taking the suite's current one"; \
      apt-get "${apt_opts[@]}" download ssg-debian -qq; }; })
  deb=$(ls "$tmp"/ssg-debian_*.deb)
  dpkg-deb -x "$deb" "$tmp/x"
  mkdir -p "$dest"
  cp "$tmp"/x/usr/share/xml/scap/ssg/content/ssg-debian12-* "$dest/"
  { basename "$deb"; sha256sum "$deb" | cut -d' ' -f1; } >"$dest/SOURCE"
  [ -s "$ds" ] || { log "no ssg-debian12-ds.xml in $(basename "$deb")"; exit 1; }
fi
# The evaluated copy, with the listed corrections (scripts/patch-openscap-content.py says what and why).
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${CKMS_VENV:-$repo/.venv}/bin/python; [ -x "$py" ] || py=python3
patched=$dest/ssg-debian12-ds.ckms.xml
want=$(cat "$repo/hardening/openscap_content_patches.yml" "$repo/scripts/patch-openscap-content.py" "$ds" | sha256sum | cut -d' ' -f1)
if [ ! -s "$patched" ] || [ "$(cat "$dest/.patch-stamp" 2>/dev/null)" != "$want" ]; then
  log "correcting the content ($(basename "$patched"))"
  "$py" "$repo/scripts/patch-openscap-content.py" "$ds" "$patched"
  echo "$want" >"$dest/.patch-stamp"
fi
echo "$patched"
