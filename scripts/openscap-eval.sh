#!/usr/bin/env bash
# make baseline: evaluate lab hosts against the public baseline (OpenSCAP, ANSSI BP-028 high, from the
# ComplianceAsCode Debian 12 content) and write, per host and profile, into $OPENSCAP_OUT:
#   <host>-<profile>.arf.xml  ARF results      <host>-<profile>.html  oscap's report
#   <host>-<profile>.json     summary: counts, and per rule id, result, severity, title; host_kind says
#                             what was evaluated (container: a tree on the controller; vm: a VM's disk)
# Usage: scripts/openscap-eval.sh [HOST...]   (default: every running host of the stack with role ca)
#        scripts/openscap-eval.sh NAME=DIR     (a root file system tree, e.g. a scratch copy of a host)
#        scripts/openscap-eval.sh NAME=vm:STATE (a running VM lab host, by its state directory)
#   CKMS_LAB_STACK    stack (default lab); its hosts come from ckms_lab.hosts
#   OPENSCAP_OUT      output directory (default build/report/openscap, build/report-<stack>/openscap)
#   OPENSCAP_PROFILES space-separated XCCDF profile ids (default ANSSI BP-028 high; the Debian 12 content
#                     has no CIS profile)
# How: nothing is installed on the host. Its root file system (the overlay the lab mounts on the
# controller) is bind-mounted read-only in a private mount namespace and evaluated with oscap-chroot.
# A VM host (make lab LAB_CA=vm) has no tree on the controller: its QEMU copies the disk as it is at that
# moment, the copy's file systems are mounted read-only where the VM mounts them (hence --rbind), with
# the VM's mount table in proc/mounts for the partition rules, and deleted afterwards (ckms_lab/vm_disk.py).
# Read-only matters: oscap's dpkginfo probe (libapt) otherwise writes package caches into the target,
# and libapt reads the target's dpkg database only with RootDir pointing at that tree (a bind of
# /proc/<pid>/root from another mount namespace shows the controller's tree instead).
# Exit: 0 when every host was evaluated (rule failures are for the checks to judge), 1 on an error.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
py=$venv/bin/python; [ -x "$py" ] || py=python3
stack=${CKMS_LAB_STACK:-lab}
out=${OPENSCAP_OUT:-$repo/build/report$([ "$stack" = lab ] || echo "-$stack")/openscap}
profiles=${OPENSCAP_PROFILES:-xccdf_org.ssgproject.content_profile_anssi_bp28_high}
log() { echo "baseline: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (reads the lab hosts' file systems)"; exit 1; }

ds=$("$repo/scripts/install-openscap.sh")
ssg=$(head -1 "$(dirname "$ds")/SOURCE" 2>/dev/null || echo unknown)
# the corrections applied to the content (hardening/openscap_content_patches.yml), named in the summary
patches=$(paste -sd, "$(dirname "$ds")/PATCHES" 2>/dev/null || true)
[ -n "$patches" ] && ssg="$ssg, corrected: $patches"
# The stack's lab name, as scripts/lab-env.sh derives it (without building the Pulumi CLI).
lab=${CKMS_LAB_NAME:-$("$py" -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
print((doc.get("config") or {}).get("ckms:labName") or "lab")' "$repo/pulumi/stacks/$stack.yaml" 2>/dev/null || echo lab)}
targets=()
hostargs=()
for a in "$@"; do
  if [[ $a == *=* ]]; then targets+=("${a%%=*}"$'\t'"${a#*=}"); else hostargs+=("$a"); fi
done
if ((${#hostargs[@]})) || ! (($#)); then
  mapfile -t -O "${#targets[@]}" targets < <(cd "$repo" && "$py" - "$lab" "${hostargs[@]}" <<'PY'
import sys
from pathlib import Path
from ckms_lab import hosts
lab, wanted = sys.argv[1], sys.argv[2:]
for h in hosts.list_hosts(lab):
    if h["running"] and (h["name"] in wanted if wanted else h["role"] == "ca"):
        rootfs = Path(h["state_dir"]) / "rootfs"
        print(f"{h['name']}\t{'vm:' + h['state_dir'] if h.get('kind') == 'vm' else rootfs}")
PY
  )
fi
((${#targets[@]})) || { log "no running host to evaluate in lab '$lab' (make lab)"; exit 1; }

mkdir -p "$out"
work=$(mktemp -d)
views=()
release_views() {
  local v
  for v in "${views[@]}"; do [ -d "$v" ] && "$py" -m ckms_lab.vm_disk release "$v"; done
  views=()
}
trap 'release_views; rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/apt-parts"
# libapt for the dpkginfo probe: none of the controller's apt.conf.d (e.g. a docker-clean that empties
# Dir::Cache::pkgcache), caches built in memory only.
cat >"$work/apt.conf" <<APT
Dir::Etc::parts "$work/apt-parts/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
rc=0
for t in "${targets[@]}"; do
  name=${t%%$'\t'*} rootfs=${t#*$'\t'} kind=container
  if [[ $rootfs == vm:* ]]; then
    kind=vm
    view=$work/vm-$name views+=("$view")
    rootfs=$(cd "$repo" && "$py" -m ckms_lab.vm_disk snapshot "${rootfs#vm:}" "$view") ||
      { log "$name: no read-only view of the VM's disk"; rc=1; continue; }
  fi
  [ -d "$rootfs/etc" ] || { log "$name: no root file system at $rootfs"; rc=1; continue; }
  for profile in $profiles; do
    short=${profile#xccdf_org.ssgproject.content_profile_}
    base=$out/$name-$short
    start=$(date +%s%N)
    set +e
    APT_CONFIG="$work/apt.conf" unshare -m --propagation private sh -c '
      mount --rbind "$1" "$2" && mount -o remount,bind,ro "$2" || exit 1
      shift 2
      exec oscap-chroot "$@"' sh "$rootfs" "$work/root" "$work/root" xccdf eval --profile "$profile" \
      --results-arf "$base.arf.xml" --report "$base.html" "$ds" >"$work/oscap.out" 2>"$work/oscap.err" </dev/null
    orc=$?
    set -e
    ms=$((($(date +%s%N) - start) / 1000000)) secs=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    # oscap: 0 all passed, 2 some rule failed, anything else is an error
    if [ "$orc" != 0 ] && [ "$orc" != 2 ]; then
      log "$name $short: oscap exit $orc"; grep -v '^WARNING' "$work/oscap.err" >&2 || true; rc=1; continue
    fi
    "$py" "$repo/scripts/openscap-summary.py" "$base.arf.xml" "$base.json" \
      --extra "host=$name" --extra "host_kind=$kind" --extra "stack=$stack" --extra "lab=$lab" --extra "content=$ssg" \
      --extra "datastream=$(basename "$ds")" --extra "duration_s=$secs" \
      --extra "oscap_version=$(oscap --version | head -1)"
    log "$name $short: $secs s -> $base.{json,html,arf.xml}"
  done
  release_views
done
exit $rc
