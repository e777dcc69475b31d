"""A point-in-time, read-only view of a VM lab host's root file system, on the controller.

Why: the public baseline (F.06 l) is evaluated with ``oscap-chroot`` over a host's root tree on the
controller, so nothing is installed on the CA host for it. A container host's tree is its overlay on the
controller; a VM host's tree is inside the qcow2 disk that its QEMU holds open. Reading that file while
the guest writes would see qcow2 metadata and ext4 half updated, so QEMU itself copies the disk
(``drive-backup`` over QMP: a copy of the disk as it was when the job started, taken in the block layer
while the guest runs on), the copies' ext4 journals are replayed as the guest's next boot would, and
the root partition and every local file system its fstab names are mounted read-only (``ro,noload``)
from loop devices, where the guest mounts them.

The copy holds the CA host's files (the token's objects are encrypted under its PIN, but still), so it
lives in a 0700 directory beside the caller's and ``release`` deletes it; the disk it was copied from
sits on the same controller already, so nothing goes anywhere it was not.

CLI (root), used by ``scripts/openscap-eval.sh`` for ``NAME=vm:STATE_DIR`` targets:
``python -m ckms_lab.vm_disk snapshot STATE_DIR WORK`` prints the mounted root; ``release WORK`` undoes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ckms_lab.hosts import LabError
from ckms_lab.vm_host import Qmp

SECTOR = 512
# The partition build-vm-image.sh gives the root file system (GPT name and type "Linux x86-64 root").
ROOT_NAME = "ckms-root"
ROOT_TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
BACKUP_TIMEOUT = 900.0


class VmDiskError(LabError):
    """The VM's disk could not be copied, read or mounted."""


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_guid: uuid.UUID
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def gpt_partitions(image: Path) -> list[Partition]:
    """The used entries of a raw disk image's primary GPT (UEFI spec 2.10, 5.3), sector size 512."""
    with image.open("rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if header[:8] != b"EFI PART":
            raise VmDiskError(f"{image}: no GPT header at LBA 1")
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        if not 128 <= entry_size <= 4096 or count > 1024:
            raise VmDiskError(f"{image}: implausible GPT ({count} entries of {entry_size} bytes)")
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    parts = []
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le").split("\x00", 1)[0]
        parts.append(Partition(i + 1, name, type_guid, first, last))
    return parts


def root_partition(parts: list[Partition]) -> Partition:
    """The root file system's partition: by its name, else the single one of the x86-64 root type."""
    named = [p for p in parts if p.name == ROOT_NAME]
    typed = [p for p in parts if p.type_guid == ROOT_TYPE]
    found = named or typed
    if len(found) != 1:
        raise VmDiskError(f"expected one root partition ({ROOT_NAME} or type {ROOT_TYPE}), found {parts}")
    return found[0]


def copy_disk(state: Path, target: Path, timeout: float = BACKUP_TIMEOUT) -> float:
    """Have the running QEMU copy the VM's system disk (``STATE/disk.qcow2``) to a raw ``target``, as it
    was when the copy started; returns the seconds it took."""
    disk = str(state / "disk.qcow2")
    qmp = Qmp(state / "qmp.sock")
    try:
        devices = [
            b["device"] for b in qmp.command("query-block") if (b.get("inserted") or {}).get("file") == disk
        ]
        if len(devices) != 1:
            raise VmDiskError(f"QEMU in {state} has no single drive backed by {disk}")
        job = f"ckms-view-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        qmp.command(
            "drive-backup",
            **{"job-id": job},
            device=devices[0],
            target=str(target),
            format="raw",
            sync="full",
        )
        done = qmp.wait_event("BLOCK_JOB_COMPLETED", start + timeout, device=job)
        if done["data"].get("error"):
            raise VmDiskError(f"copy of {disk} failed: {done['data']['error']}")
        return time.monotonic() - start
    finally:
        qmp.close()


def _run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode not in ok:
        raise VmDiskError(f"{' '.join(cmd)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}")
    return p.stdout.strip()


@dataclass(frozen=True)
class FstabEntry:
    source: str  # UUID=..., LABEL=..., PARTLABEL=... or a device path
    mount_point: str
    fs_type: str
    options: str = "defaults"


LOCAL_TYPES = ("ext4", "ext3", "ext2", "vfat")


def fstab_entries(text: str) -> list[FstabEntry]:
    """The local file systems of an fstab (``LOCAL_TYPES``, not the root, not swap), parents before
    children so they can be mounted in order."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[2] in LOCAL_TYPES and fields[1].startswith("/") and fields[1] != "/":
            opts = fields[3] if len(fields) > 3 else "defaults"
            out.append(FstabEntry(fields[0], fields[1].rstrip("/"), fields[2], opts))
    return sorted(out, key=lambda e: (e.mount_point.count("/"), e.mount_point))


def _identity(dev: str) -> dict[str, str]:
    """blkid's low-level probe of one loop device: UUID, LABEL, TYPE, PART_ENTRY_NAME (may be empty)."""
    text = _run(["blkid", "-p", "-o", "export", dev], ok=(0, 2))
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def vfat_modes(options: str) -> tuple[int, int]:
    """(file mode, directory mode) a vfat mount shows for its fstab ``options`` (umask, fmask, dmask;
    the kernel's default umask for a mount by root is 0022)."""
    opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in options.split(","))
    umask = int(opts.get("umask", "022"), 8)
    fmask = int(opts.get("fmask", oct(umask)[2:]), 8)
    dmask = int(opts.get("dmask", oct(umask)[2:]), 8)
    return 0o777 & ~fmask, 0o777 & ~dmask


def _vfat_supported() -> bool:
    return any(line.split()[-1] == "vfat" for line in Path("/proc/filesystems").read_text().splitlines())


def _extract_vfat(dev: str, entry: FstabEntry, into: Path, at: str) -> None:
    """A kernel without vfat (the build machines here): copy the ESP's files out with mtools, give them
    the modes the VM's mount options give them, and bind the copy read-only where the VM mounts it."""
    into.mkdir(mode=0o700)
    _run(["mcopy", "-s", "-p", "-n", "-i", dev, "::/", f"{into}/"], ok=(0,))
    fmode, dmode = vfat_modes(entry.options)
    for path in [into, *into.rglob("*")]:
        path.chmod(dmode if path.is_dir() else fmode)
    _run(["mount", "--bind", str(into), at])
    _run(["mount", "-o", "remount,bind,ro,nodev,nosuid,noexec", at])


def _find(source: str, devices: dict[str, dict[str, str]]) -> str | None:
    key, _, value = source.partition("=")
    field = {"UUID": "UUID", "LABEL": "LABEL", "PARTLABEL": "PART_ENTRY_NAME"}.get(key)
    if field is None:
        return None
    return next((dev for dev, ident in devices.items() if ident.get(field) == value), None)


def guest_mounts(state: Path) -> str:
    """The running VM's mount table (``/proc/self/mounts``), read over SSH as the automation account.

    Why: OpenSCAP's partition probe reads ``/proc/mounts`` inside the tree it evaluates (ANSSI R28: is
    /var its own file system, with which options), and a copied disk has no /proc. The table the kernel
    keeps is what those rules are about, so the view gets the guest's own, read at the moment of the copy.
    """
    from ckms_lab import vm_host

    info = vm_host.VmInfo(**json.loads((state / "vm.json").read_text())["info"])
    p = vm_host.ssh(info, "cat /proc/self/mounts", timeout=120)
    if p.returncode != 0 or " / " not in p.stdout:
        raise VmDiskError(
            f"no mount table from the VM over SSH (exit {p.returncode}): {p.stderr.strip()[-300:]}"
        )
    return p.stdout


def snapshot(state: Path, work: Path) -> Path:
    """Copy, replay and mount read-only, as the VM mounts them: the root partition, then every local
    file system its ``/etc/fstab`` names (ANSSI's separate /boot, /usr, /var, ... and the ESP); returns
    the mounted root (``WORK/root``), with the guest's mount table at ``proc/mounts``."""
    if not (state / "qmp.sock").exists():
        raise VmDiskError(f"{state} is not a running VM host's state directory (no qmp.sock)")
    work.mkdir(mode=0o700, parents=True, exist_ok=False)
    try:
        raw, root = work / "disk.raw", work / "root"
        mounts = guest_mounts(state)
        took = copy_disk(state, raw)
        parts = gpt_partitions(raw)
        root_part = root_partition(parts)
        devices: dict[str, dict[str, str]] = {}
        for part in parts:
            dev = _run(
                [
                    "losetup",
                    "--find",
                    "--show",
                    f"--offset={part.offset}",
                    f"--sizelimit={part.size}",
                    str(raw),
                ]
            )
            with (work / "loops").open("a") as f:
                f.write(dev + "\n")
            devices[dev] = {**_identity(dev), "PART_ENTRY_NAME": part.name, "number": str(part.number)}
            if devices[dev].get("TYPE", "").startswith("ext"):
                # 0 clean, 1 corrected (the journal replayed); anything else leaves the copy unusable
                _run(["e2fsck", "-E", "journal_only", "-y", dev], ok=(0, 1))
        root_dev = next(d for d, i in devices.items() if i["number"] == str(root_part.number))
        root.mkdir(mode=0o700)
        _run(["mount", "-t", "ext4", "-o", "ro,noload,nodev,nosuid,noexec", root_dev, str(root)])
        mounted = ["/"]
        for entry in fstab_entries((root / "etc" / "fstab").read_text()):
            dev = _find(entry.source, devices)
            if dev is None:
                raise VmDiskError(f"fstab names {entry.source} for {entry.mount_point}: not on the disk")
            at = str(root) + entry.mount_point
            if entry.fs_type == "vfat" and not _vfat_supported():
                _extract_vfat(dev, entry, work / f"vfat{len(mounted)}", at)
            else:
                opts = "ro,nodev,nosuid,noexec" + (",noload" if entry.fs_type.startswith("ext") else "")
                _run(["mount", "-t", entry.fs_type, "-o", opts, dev, at])
            mounted.append(entry.mount_point)
        # the guest's mount table where the partition probe looks for it, on a small read-only tmpfs
        proc = str(root / "proc")
        _run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0555,nodev,nosuid,noexec", "ckms-view-proc", proc])
        (root / "proc" / "mounts").write_text(mounts)
        _run(["mount", "-o", "remount,ro,nodev,nosuid,noexec", proc])
    except BaseException:
        release(work)
        raise
    print(
        f"vm_disk: {state.name}: disk copied in {took:.1f} s; mounted read-only: {' '.join(mounted)}",
        file=sys.stderr,
    )
    return root


def release(work: Path) -> None:
    """Unmount, detach the loop devices and delete the copy; safe to call on a partial snapshot."""
    root, loops = work / "root", work / "loops"
    if root.is_dir():
        _run(["umount", "--recursive", str(root)], ok=(0, 32))  # 32: not mounted
    if loops.exists():
        for dev in reversed(loops.read_text().split()):
            _run(["losetup", "--detach", dev], ok=(0, 1))
    for f in (work / "disk.raw", loops):
        f.unlink(missing_ok=True)
    for copy in work.glob("vfat*"):
        shutil.rmtree(copy)
    if root.is_dir():
        root.rmdir()
    if work.is_dir():
        work.rmdir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckms_lab.vm_disk", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="copy the VM's disk and mount its root read-only; prints the root")
    s.add_argument("state", type=Path, help="the VM host's state directory (holds qmp.sock, disk.qcow2)")
    s.add_argument("work", type=Path, help="a new directory for the copy and the mount")
    r = sub.add_parser("release", help="unmount and delete what snapshot made")
    r.add_argument("work", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "snapshot":
            print(snapshot(args.state, args.work))
        else:
            release(args.work)
    except (LabError, OSError) as exc:
        print(f"vm_disk: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
