#!/usr/bin/env bash
# Build the lab's VM CA host disk (issue 18): the golden image's root filesystem plus Debian's signed
# boot chain (shim -> grub -> kernel, all signed for UEFI Secure Boot with Microsoft's/Debian's keys)
# as a GPT disk with an EFI system partition and an ext4 root, into the per-machine cache.
#
# Why a VM at all: a container shares the build machine's kernel and sees no firmware, so kernel audit,
# AppArmor enforcement, runtime sysctls and the secure boot state can only be checked at configuration
# level in an nspawn host. In a QEMU guest booted through OVMF with Secure Boot enforced they are real.
# Why the golden image: the same packages as every other lab host, so the same playbooks converge it;
# only this VM copy gets a kernel, the boot chain and a first-boot "seed" unit (the golden build is
# never changed: the nspawn hosts must not carry a kernel they do not use).
# Why no loop devices: containers that build this may have none; the root filesystem is made from a
# directory (`mkfs.ext4 -d`), the ESP with `mkfs.vfat -C` + mtools, the GPT with sgdisk on a plain
# file, and the partitions are placed with `dd conv=notrunc`.
#
# Idempotent: rebuilt only when this script or the golden image changes (the stamp holds both hashes).
# CPU-heavy steps run under `nice -n 19` (CKMS_NICE overrides). Prints the qcow2 disk path on stdout;
# next to it, vm.json describes the disk (kernel version, root UUID, boot-chain files, signatures).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
NICE=(nice -n "${CKMS_NICE:-19}")
ROOT_SIZE=${CKMS_VM_ROOT_SIZE:-4G}   # sparse; only used blocks take space
ESP_MIB=128
KERNEL_PKG=linux-image-cloud-amd64   # from linux-signed-amd64: the Debian-signed build (checked below)
BOOT_PACKAGES=(shim-signed grub-efi-amd64-signed mokutil "$KERNEL_PKG" initramfs-tools)
HOST_PACKAGES=(qemu-system-x86 qemu-utils ovmf mtools dosfstools gdisk sbsigntool e2fsprogs)
# The VM's kernel command line: AppArmor and audit on from the first instruction; serial console for
# the boot log; a large audit backlog so early boot events are not lost.
CMDLINE="rw console=ttyS0,115200 apparmor=1 security=apparmor audit=1 audit_backlog_limit=8192"

cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
dir=$cache/lab/vm-bookworm
disk=$dir/disk.qcow2
stamp=$dir/.build-stamp
log() { echo "build-vm-image: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (apt-get, systemd-nspawn, file ownership in the image)"; exit 1; }

missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing host packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

golden=$("$here/build-golden-image.sh")
golden_stamp=$(cat "$(dirname "$golden")/.build-stamp")
want="$(sha256sum "$0" | cut -d' ' -f1) $golden_stamp"

if [ -f "$disk" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "cached $disk"
  echo "$disk"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
start=$(date +%s)
work=$dir/work
rm -rf "$work"
mkdir -p "$work"
rootfs=$work/rootfs

log "copying the golden image $golden"
cp -a "$golden" "$rootfs"

log "installing the signed boot chain into the VM copy: ${BOOT_PACKAGES[*]}"
"${NICE[@]}" systemd-nspawn -q -D "$rootfs" --register=no --keep-unit --pipe /bin/sh -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq ${BOOT_PACKAGES[*]}
  apt-get clean
  rm -rf /var/lib/apt/lists/*
" >"$dir/install.log" 2>&1 \
  || { tail -30 "$dir/install.log" >&2; log "package install failed (log: $dir/install.log)"; exit 1; }

kver=$(basename "$(ls -d "$rootfs"/lib/modules/*-cloud-amd64 | sort -V | tail -1)")
kpkg=linux-image-$kver
vmlinuz=$rootfs/boot/vmlinuz-$kver
initrd=$rootfs/boot/initrd.img-$kver
[ -f "$vmlinuz" ] && [ -f "$initrd" ] || { log "kernel $kver or its initramfs missing in /boot"; exit 1; }
ksource=$(chroot "$rootfs" dpkg-query -W -f='${source:Package}' "$kpkg")
[ "$ksource" = linux-signed-amd64 ] || { log "$kpkg comes from $ksource, not linux-signed-amd64 (unsigned)"; exit 1; }
shim=$rootfs/usr/lib/shim/shimx64.efi.signed
mokmanager=$rootfs/usr/lib/shim/mmx64.efi.signed
grub=$rootfs/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
for f in "$shim" "$grub" "$vmlinuz"; do
  [ -f "$f" ] || { log "$f missing"; exit 1; }
done
signers() { sbverify --list "$1" 2>/dev/null | sed -n 's/^.*subject: *//p' | sed 's/.*CN=//' | paste -sd'|' -; }
shim_signer=$(signers "$shim")
grub_signer=$(signers "$grub")
kernel_signer=$(signers "$vmlinuz")
log "signers: shim [$shim_signer] grub [$grub_signer] kernel [$kernel_signer]"
case "$shim_signer" in *Microsoft*) ;; *) log "shim is not signed by Microsoft's UEFI CA"; exit 1 ;; esac
case "$grub_signer$kernel_signer" in *Debian*Debian*) ;; *) log "grub or the kernel lacks Debian's signature"; exit 1 ;; esac

root_uuid=$(cat /proc/sys/kernel/random/uuid)
esp_serial=$(printf '%04X-%04X' $((RANDOM)) $((RANDOM)))

log "configuring the VM copy (fstab, seed unit, boot log)"
cat >"$rootfs/etc/fstab" <<EOF
# ckms lab VM CA host (scripts/build-vm-image.sh)
UUID=$root_uuid  /          ext4  errors=remount-ro        0 1
UUID=$esp_serial  /boot/efi  vfat  umask=0077,nofail         0 2
EOF
mkdir -p "$rootfs/boot/efi"
# A VM is no container: the lab-only "skip in a container" drop-ins stay (their condition is true
# here), so auditd and remount-fs run as on a real server.
# First boot identity from a seed disk (label CKMSSEED), as cloud-init's NoCloud would: the
# per-VM hostname, SSH host key, automation account and network come from ckms_lab.vm_host.
cat >"$rootfs/usr/local/sbin/ckms-lab-seed" <<'EOF'
#!/bin/sh
# ckms lab: apply this VM's identity from the seed disk written by ckms_lab.vm_host.
set -eu
dev=/dev/disk/by-label/CKMSSEED
if [ ! -e "$dev" ]; then echo "ckms-lab-seed: no seed disk, nothing to apply"; exit 0; fi
mnt=/run/ckms-lab-seed
mkdir -p "$mnt"
mount -o ro "$dev" "$mnt"
trap 'umount "$mnt"' EXIT
sh "$mnt/provision.sh" "$mnt"
EOF
chmod 0755 "$rootfs/usr/local/sbin/ckms-lab-seed"
cat >"$rootfs/etc/systemd/system/ckms-lab-seed.service" <<'EOF'
[Unit]
Description=ckms lab: apply the VM's identity from its seed disk
DefaultDependencies=no
Wants=dev-disk-by\x2dlabel-CKMSSEED.device
After=dev-disk-by\x2dlabel-CKMSSEED.device local-fs.target systemd-sysusers.service
Before=sysinit.target systemd-networkd.service ssh.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ckms-lab-seed

[Install]
WantedBy=sysinit.target
EOF
chroot "$rootfs" systemctl enable ckms-lab-seed.service >/dev/null 2>&1
chroot "$rootfs" systemctl enable auditd.service apparmor.service >/dev/null 2>&1 || true
# The image's machine-id is empty, so each VM's first boot generates (and commits) its own; that
# first boot must not stop at systemd-firstboot's interactive prompts on the console.
chroot "$rootfs" systemctl mask systemd-firstboot.service >/dev/null 2>&1
# Persistent journal: the boot can be read after the VM is gone (console log has the rest).
mkdir -p "$rootfs/var/log/journal"

log "root filesystem image (ext4 from the directory, $ROOT_SIZE sparse)"
rm -f "$work/root.img"
truncate -s "$ROOT_SIZE" "$work/root.img"
# GRUB 2.06 reads this ext4: keep to bookworm's default feature set (no metadata_csum_seed).
"${NICE[@]}" mkfs.ext4 -q -F -L ckms-root -U "$root_uuid" -E nodiscard -d "$rootfs" "$work/root.img"

log "EFI system partition (shim as BOOTX64.EFI, signed grub, grub.cfg)"
cat >"$work/grub.cfg" <<EOF
# ckms lab VM CA host: Debian's signed grub loads the Debian-signed kernel (shim verifies both).
set default=0
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux (ckms lab VM, $kver)' {
  search --no-floppy --fs-uuid --set=root $root_uuid
  linux /boot/vmlinuz-$kver root=UUID=$root_uuid $CMDLINE
  initrd /boot/initrd.img-$kver
}
EOF
rm -f "$work/esp.img"
mkfs.vfat -C -F 32 -n CKMS-ESP -i "${esp_serial/-/}" "$work/esp.img" $((ESP_MIB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$work/esp.img" "$shim" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$grub" ::/EFI/BOOT/grubx64.efi
[ -f "$mokmanager" ] && mcopy -i "$work/esp.img" "$mokmanager" ::/EFI/BOOT/mmx64.efi
# No fbx64.efi next to BOOTX64.EFI: with it, shim runs the fallback loader, which finds no
# BOOTX64.CSV, creates no boot entry and resets the machine: seen here as an endless "Reset System".
# Debian's signed grub looks for $prefix/grub.cfg with prefix /EFI/debian, then next to itself.
mcopy -i "$work/esp.img" "$work/grub.cfg" ::/EFI/debian/grub.cfg
mcopy -i "$work/esp.img" "$work/grub.cfg" ::/EFI/BOOT/grub.cfg

log "GPT disk (ESP + Linux x86-64 root), partitions placed with dd"
root_bytes=$(stat -c %s "$work/root.img")
esp_start=2048                                   # sectors of 512 bytes: 1 MiB alignment
esp_sectors=$((ESP_MIB * 2048))
root_start=$((esp_start + esp_sectors))
root_sectors=$((root_bytes / 512))
total_sectors=$((root_start + root_sectors + 2048))  # room for the backup GPT
raw=$work/disk.raw
rm -f "$raw"
truncate -s $((total_sectors * 512)) "$raw"
# Absolute end sectors, and no -q: with `-q` and `+N` sizes sgdisk exited 0 here without writing a table.
sgdisk -o \
  -n "1:$esp_start:$((root_start - 1))" -t 1:ef00 -c 1:EFI \
  -n "2:$root_start:$((root_start + root_sectors - 1))" -t 2:8304 -c 2:ckms-root \
  "$raw" >"$work/sgdisk.log" 2>&1 || { cat "$work/sgdisk.log" >&2; log "sgdisk failed"; exit 1; }
dd if="$work/esp.img" of="$raw" bs=1M seek=$((esp_start / 2048)) conv=notrunc,sparse status=none
dd if="$work/root.img" of="$raw" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
[ "$(sgdisk -p "$raw" | grep -cE '^ +[12] ')" = 2 ] || { sgdisk -p "$raw" >&2; log "the GPT lacks its two partitions"; exit 1; }
sgdisk -v "$raw" >/dev/null || { log "sgdisk -v reports a broken GPT"; exit 1; }

log "converting to qcow2"
"${NICE[@]}" qemu-img convert -O qcow2 "$raw" "$disk.new"
mv "$disk.new" "$disk"
cat >"$dir/vm.json" <<EOF
{
  "disk": "$disk",
  "kernel": "$kver",
  "kernel_package": "$kpkg",
  "kernel_source": "$ksource",
  "cmdline": "root=UUID=$root_uuid $CMDLINE",
  "root_uuid": "$root_uuid",
  "esp_serial": "$esp_serial",
  "signers": {"shim": "$shim_signer", "grub": "$grub_signer", "kernel": "$kernel_signer"},
  "golden_stamp": "$golden_stamp"
}
EOF
rm -rf "$work"
echo "$want" >"$stamp"
log "built in $(( $(date +%s) - start )) s ($(du -h "$disk" | cut -f1) qcow2, kernel $kver)"
echo "$disk"
