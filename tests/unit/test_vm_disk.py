"""The VM disk view's pure parts: the GPT reader that finds the root partition in QEMU's copy.

Why: the OpenSCAP evaluation of a VM CA host (F.06 l) mounts whatever partition this picks; picking the
ESP or reading a wrong offset would evaluate nothing, or the wrong tree. The copy, journal replay and
mount run for real against the VM lab (``make lab LAB_CA=vm``: ``check:F.06.l.public_baseline_anssi``).
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from ckms_lab import vm_disk

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
SECTOR = vm_disk.SECTOR


def _gpt(path: Path, parts: list[tuple[uuid.UUID, int, int, str]], entries_lba: int = 2) -> None:
    """A disk image with a primary GPT laid out as the UEFI spec (and sgdisk) writes it."""
    img = bytearray(SECTOR * 64)
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, entries_lba, 128, 128)
    img[SECTOR : SECTOR + 92] = header
    for i, (type_guid, first, last, name) in enumerate(parts):
        entry = bytearray(128)
        entry[:16] = type_guid.bytes_le
        entry[16:32] = uuid.uuid4().bytes_le
        struct.pack_into("<QQ", entry, 32, first, last)
        encoded = name.encode("utf-16-le")
        entry[56 : 56 + len(encoded)] = encoded
        at = entries_lba * SECTOR + i * 128
        img[at : at + 128] = entry
    path.write_bytes(bytes(img))


def test_finds_the_root_partition_by_name_and_gives_byte_offsets(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _gpt(disk, [(ESP_TYPE, 2048, 264191, "EFI"), (vm_disk.ROOT_TYPE, 264192, 8652799, "ckms-root")])
    parts = vm_disk.gpt_partitions(disk)
    assert [(p.number, p.name) for p in parts] == [(1, "EFI"), (2, "ckms-root")]
    root = vm_disk.root_partition(parts)
    assert root.number == 2
    assert root.offset == 264192 * 512
    assert root.size == (8652799 - 264192 + 1) * 512


def test_root_partition_by_type_when_unnamed(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _gpt(disk, [(ESP_TYPE, 2048, 4095, "EFI"), (vm_disk.ROOT_TYPE, 4096, 8191, "")])
    assert vm_disk.root_partition(vm_disk.gpt_partitions(disk)).first_lba == 4096


def test_refuses_a_disk_without_one_root_partition(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _gpt(disk, [(ESP_TYPE, 2048, 4095, "EFI")])
    with pytest.raises(vm_disk.VmDiskError, match="one root partition"):
        vm_disk.root_partition(vm_disk.gpt_partitions(disk))
    plain = tmp_path / "plain.raw"
    plain.write_bytes(bytes(64 * 512))
    with pytest.raises(vm_disk.VmDiskError, match="no GPT header"):
        vm_disk.gpt_partitions(plain)


def test_snapshot_refuses_a_directory_that_is_not_a_running_vm(tmp_path: Path) -> None:
    work = tmp_path / "view"
    with pytest.raises(vm_disk.VmDiskError, match="no qmp.sock"):
        vm_disk.snapshot(tmp_path, work)
    assert not work.exists()


def test_fstab_entries_are_local_and_parents_first() -> None:
    fstab = """# ckms lab VM
UUID=r  /  ext4  errors=remount-ro  0 1
UUID=a  /var/log/audit  ext4  nodev,nosuid,noexec  0 2
UUID=v  /var  ext4  nodev,nosuid  0 2
UUID=l  /var/log  ext4  nodev,nosuid,noexec  0 2
UUID=E1-2  /boot/efi  vfat  umask=0077,nofail  0 2
UUID=b  /boot  ext4  nodev  0 2
tmpfs  /tmp  tmpfs  nosuid  0 0
UUID=s  none  swap  sw  0 0
server:/x  /srv/nfs  nfs  ro  0 0
"""
    entries = vm_disk.fstab_entries(fstab)
    assert [e.mount_point for e in entries] == ["/boot", "/var", "/boot/efi", "/var/log", "/var/log/audit"]
    assert entries[2] == vm_disk.FstabEntry("UUID=E1-2", "/boot/efi", "vfat", "umask=0077,nofail")


def test_vfat_modes_follow_the_mount_options() -> None:
    assert vm_disk.vfat_modes("umask=0077,nofail") == (0o700, 0o700)
    assert vm_disk.vfat_modes("defaults") == (0o755, 0o755)
    assert vm_disk.vfat_modes("fmask=0177,dmask=0077") == (0o600, 0o700)
