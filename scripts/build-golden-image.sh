#!/usr/bin/env bash
# Build the lab's golden Debian bookworm root filesystem into the per-machine cache.
#
# Why a golden image: every lab host starts as an overlay of this tree, so creating a host takes
# seconds and every package a hardening role installs is already there (converge needs no network,
# which is also how an air-gapped CA server is installed). Why this package list: it is the union of
# what the roles install; keep it in one place (below) so a change here rebuilds the image.
#
# Idempotent: the image is rebuilt only when this script (package list, configuration) changes; the
# stamp holds this script's hash. Prints the rootfs path on stdout.
set -euo pipefail

MIRROR=${CKMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${CKMS_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
BASE_INCLUDE=systemd,systemd-sysv,dbus,openssh-server,python3,iproute2
PACKAGES=(
  sudo nftables iproute2 iputils-ping netcat-openbsd ca-certificates
  chrony nut wireguard-tools
  aide rkhunter chkrootkit clamav clamav-daemon
  apparmor apparmor-utils auditd libpam-pwquality unattended-upgrades
  softhsm2 opensc openssl curl
  nmap hping3 tcpdump
  python3-apt systemd-timesyncd-
)
BACKPORTS_PACKAGES=(suricata)

cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
dir=$cache/lab/golden-$SUITE
rootfs=$dir/rootfs
stamp=$dir/.build-stamp
want=$(sha256sum "$0" | cut -d' ' -f1)

log() { echo "build-golden-image: $*" >&2; }

if [ -d "$rootfs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "cached $rootfs"
  echo "$rootfs"
  exit 0
fi

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, systemd-nspawn)"; exit 1; }
for t in debootstrap systemd-nspawn; do
  command -v "$t" >/dev/null || { log "$t missing: run scripts/bootstrap-host.sh"; exit 1; }
done

# Running lab hosts are overlays of the current image: never swap it from under them.
if [ -d "$rootfs" ] && grep -q "lowerdir=$rootfs[,:]" /proc/mounts; then
  log "the golden image changed, but lab hosts still use the old one: run make lab-down first"
  exit 1
fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
tmp=$dir/rootfs.new
rm -rf "$tmp"
start=$(date +%s)
log "debootstrap $SUITE (minbase) into $tmp"
debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$tmp" "$MIRROR" >"$dir/debootstrap.log" 2>&1 \
  || { tail -20 "$dir/debootstrap.log" >&2; log "debootstrap failed (log: $dir/debootstrap.log)"; exit 1; }

cat >"$tmp/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $MIRROR $SUITE-backports main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Lab hosts are throwaway: no documentation, no recommends, so the image stays small.
cat >"$tmp/etc/apt/apt.conf.d/90ckms-lab" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

log "installing role packages (${#PACKAGES[@]} + backports: ${BACKPORTS_PACKAGES[*]})"
systemd-nspawn -q -D "$tmp" --register=no --keep-unit --pipe /bin/sh -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq ${PACKAGES[*]}
  apt-get install -y -qq -t $SUITE-backports ${BACKPORTS_PACKAGES[*]}
  apt-get clean
  rm -rf /var/lib/apt/lists/*
" >"$dir/install.log" 2>&1 \
  || { tail -30 "$dir/install.log" >&2; log "package install failed (log: $dir/install.log)"; exit 1; }

# Host-independent configuration. Per-host identity (hostname, SSH host keys, machine-id, keys,
# addresses) is written by ckms_lab.hosts when a host is created.
chroot "$tmp" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# resolved is not installed; there is no DNS inside the lab.
rm -f "$tmp/etc/ssh/ssh_host_"*
: >"$tmp/etc/machine-id"
# Units that cannot work in any container on these machines are skipped, not failed, in the lab
# only (the drop-ins live in the image, never in a role): auditd needs the host's PID namespace
# (kernel audit), and the kernel-facing helpers have nothing to do in a container.
for unit in auditd.service systemd-remount-fs.service; do
  mkdir -p "$tmp/etc/systemd/system/$unit.d"
  printf '[Unit]\n# ckms lab: cannot run inside a container on the build machines\nConditionVirtualization=!container\n' \
    >"$tmp/etc/systemd/system/$unit.d/ckms-lab.conf"
done
# Installed but not started: the default Suricata configuration sniffs eth0, which most hosts do
# not have; the ids role configures and enables it on the hosts that run it.
chroot "$tmp" systemctl disable suricata.service >/dev/null 2>&1
# The lab has no internet: do not let timers try to reach mirrors while tests run.
for unit in apt-daily.timer apt-daily-upgrade.timer clamav-freshclam.service; do
  chroot "$tmp" systemctl mask "$unit" >/dev/null 2>&1 || true
done

rm -rf "$rootfs"
mv "$tmp" "$rootfs"
echo "$want" >"$stamp"
log "built in $(( $(date +%s) - start )) s ($(du -sh "$rootfs" | cut -f1))"
echo "$rootfs"
