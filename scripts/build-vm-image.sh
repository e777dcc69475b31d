#!/usr/bin/env bash
# Build the lab's VM CA host disk (issue 18): the golden image's root filesystem plus Debian's signed
# boot chain (shim -> grub -> kernel, all signed for UEFI Secure Boot with Microsoft's/Debian's keys)
# as a GPT disk laid out as a hardened server's would be, into the per-machine cache: an EFI system
# partition, an ext4 root, and separate ext4 file systems for /boot, /usr, /opt, /home, /srv, /var,
# /var/log, /var/log/audit and /var/tmp with the mount options of ANSSI BP-028 (R28; the public
# baseline of F.06 l). The boot follows Debian's layout: the ESP's grub.cfg only finds the /boot file
# system and loads /boot/grub/grub.cfg, which update-grub maintains from /etc/default/grub on the VM
# (os_hardening's bootloader concern), so the kernel command line the baseline reads is the one booted.
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
ROOT_SIZE=${CKMS_VM_ROOT_SIZE:-1G}   # sparse, as are the others: only used blocks take space
# name, mount point, size, mount options: ANSSI BP-028 R28 and the profile's mount_option_* rules. /var
# keeps exec: dpkg runs the packages' maintainer scripts from /var/lib/dpkg/info (security updates,
# F.06 l), so mount_option_var_noexec is a recorded deviation (hardening/baseline_exclusions.yml).
PARTITIONS=(
  "boot /boot 512M nodev,nosuid,noexec"
  "usr /usr 3G nodev"
  "opt /opt 1G nodev,nosuid"
  "home /home 256M nodev,nosuid,noexec"
  "srv /srv 64M nodev,nosuid,noexec"
  "var /var 2G nodev,nosuid"
  "var-log /var/log 1G nodev,nosuid,noexec"
  "var-log-audit /var/log/audit 1G nodev,nosuid,noexec"
  "var-tmp /var/tmp 256M nodev,nosuid,noexec"
)
ESP_MIB=128
KERNEL_PKG=linux-image-cloud-amd64   # from linux-signed-amd64: the Debian-signed build (checked below)
BOOT_PACKAGES=(shim-signed grub-efi-amd64-signed mokutil "$KERNEL_PKG" initramfs-tools)
HOST_PACKAGES=(qemu-system-x86 qemu-utils ovmf mtools dosfstools gdisk sbsigntool e2fsprogs)
# The VM's kernel command line: AppArmor and audit on from the first instruction; serial console for
# the boot log; a large audit backlog so early boot events are not lost.
# The first boot's; once the bootloader concern ran, /etc/default/grub (through update-grub) decides.
CMDLINE="console=ttyS0,115200 apparmor=1 security=apparmor audit=1 audit_backlog_limit=8192"

cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
dir=${CKMS_VM_IMAGE_DIR:-$cache/lab/vm-bookworm}   # another directory: a candidate beside a running lab
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
# The ESP gets these after /usr has become a file system of its own: keep copies outside the tree.
mkdir -p "$work/efi"
for f in "$shim" "$grub" "$mokmanager"; do [ -f "$f" ] && cp "$f" "$work/efi/"; done
shim=$work/efi/$(basename "$shim") grub=$work/efi/$(basename "$grub") mokmanager=$work/efi/$(basename "$mokmanager")

root_uuid=$(cat /proc/sys/kernel/random/uuid)
esp_serial=$(printf '%04X-%04X' $((RANDOM)) $((RANDOM)))
declare -A part_uuid
for p in "${PARTITIONS[@]}"; do
  read -r name _ <<<"$p"
  part_uuid[$name]=$(cat /proc/sys/kernel/random/uuid)
done
boot_uuid=${part_uuid[boot]}

log "configuring the VM copy (fstab, bootloader configuration, seed unit, boot log)"
{
  echo "# ckms lab VM CA host (scripts/build-vm-image.sh): ANSSI BP-028 R28 partitions"
  echo "UUID=$root_uuid  /  ext4  errors=remount-ro  0 1"
  for p in "${PARTITIONS[@]}"; do
    read -r name mnt _ opts <<<"$p"
    echo "UUID=${part_uuid[$name]}  $mnt  ext4  $opts  0 2"
  done
  echo "UUID=$esp_serial  /boot/efi  vfat  umask=0077,nodev,nosuid,noexec,nofail  0 2"
} >"$rootfs/etc/fstab"
mkdir -p "$rootfs/boot/efi" "$rootfs/boot/grub"
# /etc/default/grub as Debian's grub packages would leave it (the template grub2-common ships), with
# this VM's serial console and first command line; update-grub on the VM regenerates grub.cfg from it.
template=$rootfs/usr/share/grub/default/grub
[ -f "$template" ] || { log "grub2-common's /etc/default/grub template missing"; exit 1; }
sed -e 's|^GRUB_CMDLINE_LINUX_DEFAULT=.*|GRUB_CMDLINE_LINUX_DEFAULT=""|' \
    -e "s|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX=\"$CMDLINE\"|" \
    -e 's|^GRUB_TIMEOUT=.*|GRUB_TIMEOUT=1|' \
    -e 's|^#GRUB_TERMINAL=.*|GRUB_TERMINAL="serial console"\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"|' \
    "$template" >"$rootfs/etc/default/grub"
grep -q '^GRUB_SERIAL_COMMAND=' "$rootfs/etc/default/grub" || { log "/etc/default/grub: no serial console set"; exit 1; }
# The first /boot/grub/grub.cfg, written here because grub-mkconfig cannot probe devices in a chroot; the
# first update-grub on the VM replaces it.
cat >"$rootfs/boot/grub/grub.cfg" <<GRUBCFG
# ckms lab VM CA host: first boot configuration (scripts/build-vm-image.sh); update-grub replaces it.
set default=0
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux (ckms lab VM, $kver)' --unrestricted {
  search --no-floppy --fs-uuid --set=root $boot_uuid
  linux /vmlinuz-$kver root=UUID=$root_uuid ro $CMDLINE
  initrd /initrd.img-$kver
}
GRUBCFG
chmod 0600 "$rootfs/boot/grub/grub.cfg"
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

# One ext4 per file system, each from its own directory: the deepest mount points are moved out of the
# tree first (/var/log/audit before /var/log before /var), each leaving an empty mount point behind.
# GRUB 2.06 reads /boot: keep to bookworm's default feature set (no metadata_csum_seed).
mkdir -p "$work/parts"
mapfile -t by_depth < <(printf '%s\n' "${PARTITIONS[@]}" |
  awk '{ n = gsub("/", "/", $2); print n, $0 }' | sort -rn | cut -d' ' -f2-)
for p in "${by_depth[@]}"; do
  read -r name mnt _ <<<"$p"
  mkdir -p "$rootfs$mnt"
  mv "$rootfs$mnt" "$work/parts/$name"
  mkdir "$rootfs$mnt"
  chmod --reference="$work/parts/$name" "$rootfs$mnt"
done
log "file system images (ext4 from directories, sparse): / $ROOT_SIZE, then ${PARTITIONS[*]}"
make_ext4() {  # label uuid size dir image
  rm -f "$5"
  truncate -s "$3" "$5"
  "${NICE[@]}" mkfs.ext4 -q -F -L "$1" -U "$2" -E nodiscard -d "$4" "$5"
}
make_ext4 ckms-root "$root_uuid" "$ROOT_SIZE" "$rootfs" "$work/root.img"
for p in "${PARTITIONS[@]}"; do
  read -r name _ size _ <<<"$p"
  make_ext4 "ckms-$name" "${part_uuid[$name]}" "$size" "$work/parts/$name" "$work/$name.img"
done

log "EFI system partition (shim as BOOTX64.EFI, signed grub, the grub.cfg that finds /boot)"
# As grub-install writes it on Debian: find the /boot file system, load its grub/grub.cfg. Debian's
# signed grub loads the Debian-signed kernel that configuration names (shim verifies both).
cat >"$work/grub.cfg" <<EOF
search.fs_uuid $boot_uuid root
set prefix=(\$root)'/grub'
configfile \$prefix/grub.cfg
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

log "GPT disk (ESP, Linux x86-64 root, then one partition per file system), partitions placed with dd"
# image, GPT type, GPT name: the root keeps type 8304 and name ckms-root (ckms_lab/vm_disk.py finds it so).
layout=("$work/esp.img ef00 EFI" "$work/root.img 8304 ckms-root")
for p in "${PARTITIONS[@]}"; do
  read -r name _ <<<"$p"
  layout+=("$work/$name.img 8300 ckms-$name")
done
sg_args=()
next=2048                                        # sectors of 512 bytes: 1 MiB alignment
declare -a starts
for i in "${!layout[@]}"; do
  read -r img type pname <<<"${layout[$i]}"
  sectors=$(($(stat -c %s "$img") / 512))
  starts[$i]=$next
  sg_args+=(-n "$((i + 1)):$next:$((next + sectors - 1))" -t "$((i + 1)):$type" -c "$((i + 1)):$pname")
  next=$((next + sectors))
done
total_sectors=$((next + 2048))                   # room for the backup GPT
raw=$work/disk.raw
rm -f "$raw"
truncate -s $((total_sectors * 512)) "$raw"
# Absolute end sectors, and no -q: with `-q` and `+N` sizes sgdisk exited 0 here without writing a table.
sgdisk -o "${sg_args[@]}" "$raw" >"$work/sgdisk.log" 2>&1 ||
  { cat "$work/sgdisk.log" >&2; log "sgdisk failed"; exit 1; }
for i in "${!layout[@]}"; do
  read -r img _ <<<"${layout[$i]}"
  dd if="$img" of="$raw" bs=1M seek=$((starts[i] / 2048)) conv=notrunc,sparse status=none
done
[ "$(sgdisk -p "$raw" | grep -cE '^ +[0-9]+ ')" = "${#layout[@]}" ] ||
  { sgdisk -p "$raw" >&2; log "the GPT lacks some of its ${#layout[@]} partitions"; exit 1; }
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
  "cmdline": "root=UUID=$root_uuid ro $CMDLINE",
  "root_uuid": "$root_uuid",
  "boot_uuid": "$boot_uuid",
  "partitions": "$(printf '%s;' "${PARTITIONS[@]}")",
  "esp_serial": "$esp_serial",
  "signers": {"shim": "$shim_signer", "grub": "$grub_signer", "kernel": "$kernel_signer"},
  "golden_stamp": "$golden_stamp"
}
EOF
rm -rf "$work"
echo "$want" >"$stamp"
log "built in $(( $(date +%s) - start )) s ($(du -h "$disk" | cut -f1) qcow2, kernel $kver)"
echo "$disk"
