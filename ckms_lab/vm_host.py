"""The lab's VM CA host: the golden image booted in QEMU through OVMF with Secure Boot enforced.

Why a VM next to the nspawn hosts (issue 18): a container shares the build machine's kernel and sees no
firmware, so kernel audit, AppArmor enforcement, runtime sysctls and the secure boot state can only be
verified at configuration level there. A QEMU guest booted by OVMF (Secure Boot on, Microsoft's keys
enrolled) through Debian's signed shim, grub and kernel has its own kernel and real EFI variables, so
those checks run for real. The disk is ``scripts/build-vm-image.sh``'s (the golden image plus the boot
chain); each VM boots a copy-on-write overlay of it, plus a small *seed* disk (label ``CKMSSEED``) that
gives it its identity on boot, as cloud-init's NoCloud would: hostname, an SSH host key pinned in
``known_hosts``, the automation account with the controller's key, and its network.

Why "KVM, else TCG": ``/dev/kvm`` exists on the build machines but guests have hung right after the boot
loader there (see ``../shared/notes/lab-recipes.md``), so KVM gets a deadline and the VM is restarted
from a fresh overlay under TCG when it does not answer SSH in time.

Two ways to network it:

* alone (``python -m ckms_lab.vm_host up``): QEMU user-mode networking, needing no host configuration;
  SSH reaches the guest through a ``hostfwd`` on 127.0.0.1 and ``restrict=on`` keeps it off every other
  network;
* as a lab host (``VmSpec.nics`` set, by ``ckms_lab.hosts.create_host`` for a host of kind ``vm``, which
  is how ``make lab LAB_CA=vm`` builds its CA host): one TAP device per NIC inside the host's own network
  namespace, bridged there to the same veth pair an nspawn host gets, so the VM sits on the lab's
  segments (management bridge, CA segment behind the router) exactly where the container would.

CLI: ``python -m ckms_lab.vm_host up|down|status|ssh-check|inventory``. QEMU runs under ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckms_lab import paths
from ckms_lab.hosts import (
    AUTOMATION_HOME,
    AUTOMATION_SHELL,
    AUTOMATION_SUDOERS,
    AUTOMATION_UID,
    AUTOMATION_USER,
    LabError,
    Nic,
)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
#: Microsoft's KEK/db (and Debian's ovmf PK) enrolled, Secure Boot enabled: what a server ships with.
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
SEED_LABEL = "CKMSSEED"
#: The guest side of QEMU's user-mode network (slirp's defaults): the guest is .15, the host .2.
USER_NET_ADDRESS = "10.0.2.15/24"
USER_NET_GATEWAY = "10.0.2.2"
#: -cpu per accelerator: ``host`` alone fails on MSR 0x10a (IA32_ARCH_CAPABILITIES) on these machines.
CPU_MODELS = {"kvm": "host,-arch-capabilities", "tcg": "max"}
STOP_TIMEOUT = 60.0
_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


# ------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class VmSpec:
    """One VM host: its name, size, how to boot it and how long to wait for each accelerator."""

    lab: str
    name: str
    role: str = "ca"
    memory_mib: int = 2048
    cpus: int = 2
    accels: tuple[str, ...] = ("kvm", "tcg")
    #: seconds from QEMU start to an SSH banner, per accelerator (TCG boots OVMF with SMM slowly)
    deadlines: dict[str, float] = field(default_factory=lambda: {"kvm": 90.0, "tcg": 900.0})
    nice: int = 19
    ssh_port: int = 0  # 0: pick a free port on 127.0.0.1
    image: str = field(default_factory=lambda: str(vm_image()))
    #: Lab host mode (``ckms_lab.hosts``): the NICs (first one on the management segment), the network
    #: namespace holding one TAP per NIC, the state directory and the cgroups QEMU is put in.
    nics: tuple[Nic, ...] = ()
    netns: str = ""
    state: str = ""
    cgroups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for value, what in ((self.lab, "lab"), (self.name, "host")):
            if not _NAME.match(value):
                raise LabError(f"{what} name {value!r} must match {_NAME.pattern}")
        for accel in self.accels:
            if accel not in CPU_MODELS:
                raise LabError(f"unknown accelerator {accel!r} (kvm or tcg)")

    @property
    def state_dir(self) -> Path:
        return Path(self.state) if self.state else vm_state_dir(self.lab, self.name)

    @property
    def mac(self) -> str:
        """A stable locally administered MAC per lab/name (QEMU's 52:54:00 prefix)."""
        return _mac(f"{self.lab}/{self.name}")

    def nic_mac(self, nic: Nic) -> str:
        """The MAC of one lab NIC: the guest's networkd matches its ``.network`` file by it."""
        return _mac(f"{self.lab}/{self.name}/{nic.ifname}")

    @property
    def mgmt_address(self) -> str:
        """Where the controller reaches sshd: the first NIC's address in lab mode."""
        return str(ipaddress.ip_interface(self.nics[0].address).ip) if self.nics else "127.0.0.1"


def _mac(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def tap_name(nic: Nic) -> str:
    """The TAP device of one NIC inside the VM host's network namespace."""
    return f"tap-{nic.ifname}"


def nic_bridge(nic: Nic) -> str:
    """The bridge joining a NIC's TAP and its veth end inside the VM host's network namespace."""
    return f"br-{nic.ifname}"


@dataclass
class VmInfo:
    """What a booted VM reports (status, inventory): how it is reached and how it booted."""

    lab: str
    name: str
    role: str
    pid: int
    accel: str
    ssh_host: str
    ssh_port: int
    host_key: str
    boot_seconds: float
    state_dir: str
    attempts: list[dict[str, object]]


def vm_image() -> Path:
    """The disk built by ``scripts/build-vm-image.sh``."""
    return paths.vm_image()


def vm_state_dir(lab: str, name: str) -> Path:
    """Per-VM state. ``_vm`` is no valid lab name, so the nspawn driver's sweeps never touch it."""
    return paths.lab_root() / "_vm" / lab / name


# --------------------------------------------------------------------------------- pure builders
def qemu_command(
    spec: VmSpec, accel: str, state: Path, ssh_port: int, *, qemu: str = "qemu-system-x86_64"
) -> list[str]:
    """The QEMU command line for one boot attempt (without the ``nice`` prefix)."""
    return [
        qemu,
        "-name",
        f"ckms-{spec.lab}-{spec.name},process=ckms-vm-{spec.lab}-{spec.name}",
        "-machine",
        "q35,smm=on",
        "-accel",
        accel,
        "-cpu",
        CPU_MODELS[accel],
        "-smp",
        str(spec.cpus),
        "-m",
        str(spec.memory_mib),
        # Secure Boot: the SMM build of OVMF, its flash write-protected outside SMM.
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-global",
        "ICH9-LPC.disable_s3=1",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={state / 'OVMF_VARS.fd'}",
        "-drive",
        f"if=virtio,format=qcow2,file={state / 'disk.qcow2'}",
        "-drive",
        f"if=virtio,format=raw,readonly=on,file={state / 'seed.img'}",
        *_network_args(spec, ssh_port),
        "-object",
        "rng-random,id=rng,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        f"file:{state / 'console.log'}",
        "-qmp",
        f"unix:{state / 'qmp.sock'},server=on,wait=off",
        "-pidfile",
        str(state / "qemu.pid"),
    ]


def _network_args(spec: VmSpec, ssh_port: int) -> list[str]:
    """One virtio NIC per lab NIC on its TAP, or the single user-mode NIC with the SSH forward."""
    if not spec.nics:
        return [
            "-netdev",
            f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device",
            f"virtio-net-pci,netdev=mgmt,mac={spec.mac}",
        ]
    args: list[str] = []
    for i, nic in enumerate(spec.nics):
        args += [
            "-netdev",
            f"tap,id=n{i},ifname={tap_name(nic)},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n{i},mac={spec.nic_mac(nic)}",
        ]
    return args


def network_units(spec: VmSpec) -> dict[str, str]:
    """systemd-networkd ``.network`` files for the guest, matched by MAC: the same addresses, gateway
    and routes ``ckms_lab.hosts`` gives an nspawn host's interfaces (there matched by name)."""
    if not spec.nics:
        return {
            "10-ckms-mgmt0.network": "\n".join(
                [
                    "[Match]",
                    f"MACAddress={spec.mac}",
                    "",
                    "[Network]",
                    f"Address={USER_NET_ADDRESS}",
                    f"Gateway={USER_NET_GATEWAY}",
                    "LinkLocalAddressing=no",
                    "IPv6AcceptRA=no",
                ]
            )
            + "\n"
        }
    units = {}
    for nic in spec.nics:
        lines = ["[Match]", f"MACAddress={spec.nic_mac(nic)}", "", "[Network]", f"Address={nic.address}"]
        lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
        if nic.gateway:
            lines.append(f"Gateway={nic.gateway}")
        for dest, via in nic.routes:
            lines += ["", "[Route]", f"Destination={dest}", f"Gateway={via}"]
        units[f"10-ckms-{nic.ifname}.network"] = "\n".join(lines) + "\n"
    return units


def provision_script(spec: VmSpec, authorized_key: str) -> str:
    """The seed's ``provision.sh``: run as root by the image's ``ckms-lab-seed.service`` on every boot,
    before networkd and sshd. The automation account matches ``ckms_lab.hosts`` (same name, uid, sudo
    bootstrap that os_hardening takes over), so the same inventory and playbooks apply."""
    key = authorized_key.strip()
    if "\n" in key or "'" in key:
        raise LabError("the authorized key must be one line without quotes")
    units = "".join(
        f"cat >\"$new/{fname}\" <<'EOF'\n{text}EOF\n" for fname, text in network_units(spec).items()
    )
    # Lab NICs get the names an nspawn host's have (mgmt0, eth0, ...): renamed by MAC now, before
    # networkd starts, and by a .link file on later boots.
    for nic in spec.nics:
        mac = spec.nic_mac(nic)
        units += (
            f"cat >\"$new/10-ckms-{nic.ifname}.link\" <<'EOF'\n"
            f"[Match]\nMACAddress={mac}\n\n[Link]\nName={nic.ifname}\nEOF\n"
            f"for d in /sys/class/net/*; do\n"
            f'  if [ "$(cat "$d/address")" = {mac} ] && [ "${{d##*/}}" != {nic.ifname} ]; then\n'
            f'    ip link set dev "${{d##*/}}" down; ip link set dev "${{d##*/}}" name {nic.ifname}\n'
            f"  fi\n"
            f"done\n"
        )
    return f"""#!/bin/sh
# ckms lab VM {spec.lab}/{spec.name}: identity from the seed disk (written by ckms_lab.vm_host).
# A file is replaced only when its content differs, so a reboot changes nothing the integrity baseline
# (AIDE, F.11 b) watches in /etc.
set -eu
seed=$1
# not under /tmp: systemd-tmpfiles empties /tmp at boot, in parallel with this unit
new=$(mktemp -d /run/ckms-lab-seed-new.XXXXXX)
trap 'rm -rf "$new"' EXIT
put() {{  # put MODE SOURCE DEST
  if ! cmp -s "$2" "$3"; then install -m "$1" "$2" "$3"; fi
}}
echo {spec.name} >"$new/hostname"
put 0644 "$new/hostname" /etc/hostname
hostname {spec.name}
printf '127.0.0.1 localhost\\n127.0.1.1 {spec.name}\\n::1 localhost ip6-localhost ip6-loopback\\n' >"$new/hosts"
put 0644 "$new/hosts" /etc/hosts
for k in /etc/ssh/ssh_host_*; do
  case $k in /etc/ssh/ssh_host_ed25519_key|/etc/ssh/ssh_host_ed25519_key.pub) ;; *) rm -f "$k" ;; esac
done
put 0600 "$seed/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
put 0644 "$seed/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /etc/ssh/sshd_config.d
echo 'HostKey /etc/ssh/ssh_host_ed25519_key' >"$new/00-ckms-lab.conf"
put 0644 "$new/00-ckms-lab.conf" /etc/ssh/sshd_config.d/00-ckms-lab.conf
if ! getent passwd {AUTOMATION_USER} >/dev/null; then
  groupadd --system --gid {AUTOMATION_UID} {AUTOMATION_USER}
  useradd --system --uid {AUTOMATION_UID} --gid {AUTOMATION_UID} --home-dir {AUTOMATION_HOME} \\
    --create-home --shell {AUTOMATION_SHELL} --comment 'CKMS automation (Ansible from the controller)' \\
    {AUTOMATION_USER}
  install -d -m 0700 -o {AUTOMATION_UID} -g {AUTOMATION_UID} {AUTOMATION_HOME}/.ssh
  echo '{key}' >{AUTOMATION_HOME}/.ssh/authorized_keys
  chown {AUTOMATION_UID}:{AUTOMATION_UID} {AUTOMATION_HOME}/.ssh/authorized_keys
  chmod 0600 {AUTOMATION_HOME}/.ssh/authorized_keys
  chmod 0700 {AUTOMATION_HOME}
  printf '# Bootstrap (ckms_lab.vm_host, as cloud-init would): os_hardening replaces it.\\n{AUTOMATION_USER} ALL=(ALL:ALL) NOPASSWD: ALL\\n' \\
    >/{AUTOMATION_SUDOERS}
  chmod 0440 /{AUTOMATION_SUDOERS}
  rm -f /root/.ssh/authorized_keys
fi
{units}for f in /etc/systemd/network/10-ckms-*.network /etc/systemd/network/10-ckms-*.link; do
  if [ -e "$f" ] && [ ! -e "$new/${{f##*/}}" ]; then rm -f "$f"; fi
done
for f in "$new"/10-ckms-*; do
  if [ -e "$f" ]; then put 0644 "$f" "/etc/systemd/network/${{f##*/}}"; fi
done
"""


# --------------------------------------------------------------------------------------- parsing
@dataclass
class KernelFacts:
    """The kernel-level facts an nspawn host cannot show, as read inside the VM."""

    secure_boot: bool | None = None
    secure_boot_var: list[int] = field(default_factory=list)
    mokutil: str = ""
    lockdown: str = ""
    apparmor_enabled: bool | None = None
    apparmor_profiles_enforced: int | None = None
    audit_enabled: int | None = None
    audit_pid: int | None = None
    auditd_active: str = ""
    audit_rules: int | None = None
    operator_actions: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    kernel: str = ""
    cmdline: str = ""
    raw: dict[str, str] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """What is not as a hardened CA host needs it (empty: all good)."""
        out = []
        if self.secure_boot is not True:
            out.append(f"secure boot not on (EFI variable {self.secure_boot_var}, mokutil {self.mokutil!r})")
        if self.apparmor_enabled is not True:
            out.append("AppArmor not enabled")
        if self.audit_enabled not in (1, 2):
            out.append(f"kernel audit not enabled (auditctl -s: enabled {self.audit_enabled})")
        if self.auditd_active != "active" or not self.audit_pid:
            out.append(f"auditd not running (systemd: {self.auditd_active!r}, audit pid {self.audit_pid})")
        if not self.operator_actions:
            out.append("no operator action (sudo USER_CMD) in the audit log")
        return out


def parse_efi_bool(data: bytes) -> bool | None:
    """An EFI boolean variable as read from efivarfs: 4 attribute bytes, then the value (1 = on)."""
    if len(data) < 5:
        return None
    return data[-1] == 1


def parse_auditctl_status(text: str) -> dict[str, int]:
    """``auditctl -s`` (``enabled 1`` / ``pid 312`` … one per line) into numbers."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_aa_status(text: str) -> tuple[bool, int | None]:
    """``aa-status``: whether the module is loaded, and how many profiles are in enforce mode."""
    loaded = "apparmor module is loaded" in text
    m = re.search(r"^(\d+) profiles are in enforce mode", text, re.M)
    return loaded, int(m.group(1)) if m else None


def parse_sysctls(text: str) -> dict[str, str]:
    """``sysctl a b`` output (``a = 1``) into a dict."""
    out = {}
    for line in text.splitlines():
        if " = " in line:
            k, v = line.split(" = ", 1)
            out[k.strip()] = v.strip()
    return out


# ------------------------------------------------------------------------------------------ helpers
def _run(
    args: Sequence[str], *, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return not stat.split(") ")[-1].startswith("Z")


def _is_our_qemu(pid: int, state: Path) -> bool:
    """Only a QEMU process whose command line names this VM's state directory may be signalled."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "qemu-system" in cmd and str(state) in cmd


def _tail(path: Path, n: int = 2500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _ssh_banner(port: int, host: str = "127.0.0.1") -> bool:
    """slirp accepts a forwarded connection before the guest listens, so wait for sshd's banner."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(3)
        return s.recv(4).startswith(b"SSH-")
    return False


def _make_seed(spec: VmSpec, state: Path, authorized_key: str) -> str:
    """Write the seed directory and its ext4 image (no loop device: ``mkfs.ext4 -d``); returns the
    SSH host public key (``type base64``) to pin."""
    seed = state / "seed"
    if seed.exists():
        shutil.rmtree(seed)
    seed.mkdir(mode=0o700)
    key = seed / "ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{spec.name}", "-f", str(key)])
    (seed / "provision.sh").write_text(provision_script(spec, paths.ssh_public_key()))
    img = state / "seed.img"
    img.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", str(seed), str(img), "8M"])
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def _fresh_disk(spec: VmSpec, state: Path) -> None:
    """A new copy-on-write overlay of the image and a new copy of the Secure Boot variable store."""
    disk = state / "disk.qcow2"
    disk.unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", spec.image, str(disk)])
    shutil.copyfile(OVMF_VARS, state / "OVMF_VARS.fd")


def _start(spec: VmSpec, accel: str, state: Path, port: int) -> subprocess.Popen[bytes]:
    (state / "console.log").unlink(missing_ok=True)
    cmd = ["nice", "-n", str(spec.nice), *qemu_command(spec, accel, state, port)]
    if spec.netns:
        # As a lab host: QEMU opens the TAPs in the host's namespace, and lives in the host's cgroups
        # (the shell moves itself there, then becomes QEMU: no Python between fork and exec, see
        # ckms_lab.hosts), so the driver's listing and destroy treat it like an nspawn host's systemd.
        enter = "; ".join(f'echo $$ >"{cg}/cgroup.procs"' for cg in spec.cgroups) or ":"
        cmd = [
            "/bin/sh",
            "-c",
            f'{enter}; exec "$@"',
            "ckms-lab-boot",
            "ip",
            "netns",
            "exec",
            spec.netns,
            *cmd,
        ]
    with open(state / "qemu.log", "ab") as out:
        out.write(f"\n== {time.strftime('%F %T')} {accel}: {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


class Qmp:
    """A minimal QMP client (the QEMU control socket): one command at a time, events kept for
    ``wait_event``. Powers the VM down here; ``ckms_lab.vm_disk`` copies its disk with it."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.command("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise LabError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise LabError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name: str, deadline: float, **match: Any) -> dict[str, Any]:
        while True:
            for e in self.events:
                if e["event"] == name and all(e.get("data", {}).get(k) == v for k, v in match.items()):
                    self.events.remove(e)
                    return e
            if time.monotonic() > deadline:
                raise LabError(f"QMP: no {name} event for {match} in time")
            self.events.append(self._read())


def _stop(pid: int, state: Path, timeout: float = STOP_TIMEOUT) -> None:
    """ACPI power button over QMP (a clean shutdown), then SIGTERM, then SIGKILL."""
    if not (_alive(pid) and _is_our_qemu(pid, state)):
        return
    with contextlib.suppress(OSError, ValueError, LabError):
        qmp = Qmp(state / "qmp.sock", timeout=5)
        try:
            qmp.command("system_powerdown")
        finally:
            qmp.close()
    for sig, wait in ((None, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if sig is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.3)
        if not _alive(pid):
            return
    raise LabError(f"QEMU pid {pid} survives SIGKILL")


# --------------------------------------------------------------------------------------- lifecycle
def up(spec: VmSpec) -> VmInfo:
    """Boot the VM; returns once its sshd answers. Replaces a VM of the same name.

    Tries each accelerator in ``spec.accels`` with its deadline, each from a fresh overlay and variable
    store, and records every attempt (with the console's last lines when it failed)."""
    if os.geteuid() != 0:
        raise LabError("the VM host needs root (/dev/kvm, the lab's state directory)")
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: run scripts/build-vm-image.sh (it installs the host packages)")
    for f in (Path(spec.image), OVMF_CODE, OVMF_VARS):
        if not f.exists():
            raise LabError(f"{f} missing: run scripts/build-vm-image.sh")
    if not spec.nics:
        down(spec.lab, spec.name)  # as a lab host, ckms_lab.hosts has cleaned up already
    state = spec.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    host_key = _make_seed(spec, state, paths.ssh_public_key())
    if spec.nics:
        ssh_host, port = spec.mgmt_address, 22
        (state / "known_hosts").write_text(f"{ssh_host} {host_key}\n")
    else:
        ssh_host, port = "127.0.0.1", spec.ssh_port or _free_port()
        (state / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    attempts: list[dict[str, object]] = []
    for accel in spec.accels:
        if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            attempts.append({"accel": accel, "ok": False, "error": "/dev/kvm not accessible"})
            continue
        _fresh_disk(spec, state)
        t0 = time.monotonic()
        proc = _start(spec, accel, state, port)
        deadline = t0 + spec.deadlines.get(accel, 600.0)
        error = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last = _tail(state / "qemu.log", 4000).strip().splitlines()[-2:]
                error = f"qemu exited with {proc.returncode}: {' / '.join(last)}"
                break
            if accel == "kvm" and "KVM internal error" in _tail(state / "qemu.log", 4000):
                # the vCPU stopped (seen here: emulation failure in OVMF's first instructions); QEMU
                # keeps running paused, so do not wait for the deadline
                error = "KVM internal error: " + _tail(state / "qemu.log", 600)
                break
            if _ssh_banner(port, ssh_host):
                seconds = round(time.monotonic() - t0, 1)
                attempts.append({"accel": accel, "ok": True, "seconds": seconds})
                info = VmInfo(
                    lab=spec.lab,
                    name=spec.name,
                    role=spec.role,
                    pid=proc.pid,
                    accel=accel,
                    ssh_host=ssh_host,
                    ssh_port=port,
                    host_key=host_key,
                    boot_seconds=seconds,
                    state_dir=str(state),
                    attempts=attempts,
                )
                _save(spec, info)
                return info
            time.sleep(1.0)
        else:
            error = f"no SSH banner within {spec.deadlines.get(accel, 600.0):.0f} s"
        console = _tail(state / "console.log")
        (state / f"console-{accel}-failed.log").write_text(console)
        attempts.append(
            {
                "accel": accel,
                "ok": False,
                "seconds": round(time.monotonic() - t0, 1),
                "error": error,
                "console_tail": console[-800:],
            }
        )
        _stop(proc.pid, state, timeout=5.0)
        with contextlib.suppress(ChildProcessError):
            proc.wait(timeout=5)
    raise LabError(f"VM {spec.lab}/{spec.name} did not boot: {json.dumps(attempts, indent=2)}")


def _save(spec: VmSpec, info: VmInfo) -> None:
    d = asdict(spec)
    d["accels"] = list(spec.accels)
    (spec.state_dir / "vm.json").write_text(json.dumps({"spec": d, "info": asdict(info)}, indent=2))


def load(lab: str, name: str) -> VmInfo | None:
    """The recorded VM, or None."""
    f = vm_state_dir(lab, name) / "vm.json"
    if not f.exists():
        return None
    return VmInfo(**json.loads(f.read_text())["info"])


def status(lab: str, name: str) -> dict[str, object]:
    """Recorded facts plus whether QEMU still runs."""
    info = load(lab, name)
    state = vm_state_dir(lab, name)
    if info is None:
        return {"lab": lab, "name": name, "exists": state.exists(), "running": False}
    running = _alive(info.pid) and _is_our_qemu(info.pid, state)
    return {**asdict(info), "exists": True, "running": running, "ssh": running and _ssh_banner(info.ssh_port)}


def down(lab: str, name: str) -> bool:
    """Power the VM off (clean ACPI shutdown first) and remove its state; True if anything was there."""
    state = vm_state_dir(lab, name)
    if not state.exists():
        return False
    pids = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids.add(int((state / "qemu.pid").read_text().strip()))
    info = load(lab, name)
    if info:
        pids.add(info.pid)
    for pid in pids:
        _stop(pid, state)
    shutil.rmtree(state)
    with contextlib.suppress(OSError):
        state.parent.rmdir()
        state.parent.parent.rmdir()
    return True


# ------------------------------------------------------------------------------------------- checks
def ssh_args(info: VmInfo) -> list[str]:
    """``ssh`` to the VM as the automation account with the lab key and the pinned host key."""
    return [
        "ssh",
        "-i",
        str(paths.ssh_key()),
        "-p",
        str(info.ssh_port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={Path(info.state_dir) / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=15",
        f"{AUTOMATION_USER}@{info.ssh_host}",
    ]


def ssh(info: VmInfo, command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one shell command in the VM."""
    return _run([*ssh_args(info), command], check=False, timeout=timeout)


#: One probe per fact; each runs with sudo (root reads efivars, the audit status and AppArmor's list).
PROBES = {
    "efivar": f"sudo od -An -tu1 /sys/firmware/efi/efivars/{SECURE_BOOT_VAR}",
    "mokutil": "mokutil --sb-state 2>&1",
    "lockdown": "cat /sys/kernel/security/lockdown 2>&1",
    "aa-status": "sudo aa-status 2>&1",
    "apparmor-param": "cat /sys/module/apparmor/parameters/enabled 2>&1",
    "auditctl-s": "sudo auditctl -s 2>&1",
    "auditctl-l": "sudo auditctl -l 2>&1",
    "auditd": "systemctl is-active auditd 2>&1",
    "sysctl": "sudo /sbin/sysctl fs.protected_symlinks kernel.kptr_restrict 2>&1",  # not on a user's PATH
    "uname": "uname -r",
    "cmdline": "cat /proc/cmdline",
    # --input-logs: without a terminal on stdin, ausearch reads stdin instead of the logs (no matches)
    "operator-action": "sudo ausearch --input-logs -m USER_CMD -ts recent -i 2>&1 | grep '^type=USER_CMD' | tail -n 2",
}


_MARK = "@@ckms-probe "


def probe_script() -> str:
    """All probes as one shell command (one SSH round trip: each costs seconds under TCG)."""
    return "; ".join(f"echo '{_MARK}{key}'; {cmd}" for key, cmd in PROBES.items())


def split_probe_output(text: str) -> dict[str, str]:
    """The output of :func:`probe_script`, per probe."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK) :].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def check(info: VmInfo) -> KernelFacts:
    """Read the kernel-level facts inside the VM over SSH."""
    facts = KernelFacts()
    proc = ssh(info, probe_script())
    if proc.returncode == 255:
        raise LabError(f"ssh to {info.ssh_host}:{info.ssh_port} failed: {proc.stderr.strip()}")
    facts.raw = split_probe_output(proc.stdout)
    missing = sorted(set(PROBES) - set(facts.raw))
    if missing:
        raise LabError(f"probes {missing} printed nothing: {proc.stderr.strip()}")
    numbers = [int(x) for x in facts.raw["efivar"].split() if x.isdigit()]
    facts.secure_boot_var = numbers
    facts.secure_boot = parse_efi_bool(bytes(numbers)) if numbers else None
    facts.mokutil = facts.raw["mokutil"]
    facts.lockdown = facts.raw["lockdown"]
    loaded, enforced = parse_aa_status(facts.raw["aa-status"])
    facts.apparmor_enabled = loaded and facts.raw["apparmor-param"] == "Y"
    facts.apparmor_profiles_enforced = enforced
    st = parse_auditctl_status(facts.raw["auditctl-s"])
    facts.audit_enabled, facts.audit_pid = st.get("enabled"), st.get("pid")
    facts.auditd_active = facts.raw["auditd"]
    rules = facts.raw["auditctl-l"]
    facts.audit_rules = 0 if rules.startswith("No rules") else len(rules.splitlines())
    facts.operator_actions = [
        ln for ln in facts.raw["operator-action"].splitlines() if ln.startswith("type=")
    ]
    facts.sysctls = parse_sysctls(facts.raw["sysctl"])
    facts.kernel, facts.cmdline = facts.raw["uname"], facts.raw["cmdline"]
    return facts


# ------------------------------------------------------------------------------------------ inventory
def inventory_outputs(info: VmInfo, *, with_hub: bool = True) -> dict[str, Any]:
    """Stack-output-shaped data for the VM alone (``ckms_lab.inventory.render`` input): the lab model's
    flows and segments, and the VM as host ``info.name`` with its role.

    Why the controller address is slirp's 10.0.2.2: that is where the controller's SSH comes from as the
    guest sees it, and os_hardening binds the automation key (``from=``), sshd and the host firewall to
    ``ckms_controller_address``; the lab's 10.231.0.1 would lock Ansible out after the first converge."""
    from ckms_lab import model

    env = model.build_environment("lab", "lab", with_hub=with_hub).to_dict()
    return {
        "kind": env["kind"],
        "controller_address": f"{USER_NET_GATEWAY}/24",
        "time_sources": list(env["time_sources"]),
        "segments": env["segments"],
        "flows": env["flows"],
        "hosts": {
            info.name: {
                "mgmt_address": info.ssh_host,
                "role": info.role,
                "addresses": {"mgmt": USER_NET_ADDRESS.split("/")[0]},
                "host_key": info.host_key,
            }
        },
    }


def write_inventory(info: VmInfo, directory: Path) -> Path:
    """``hosts.yml`` + ``known_hosts`` for the VM, rendered by ``ckms_lab.inventory`` and then given
    the forwarded port: ``ansible_port`` and a ``[127.0.0.1]:PORT`` pin (ssh looks non-22 ports up so)."""
    import yaml  # type: ignore[import-untyped]

    from ckms_lab import inventory

    hosts_file = inventory.render(inventory_outputs(info), directory)
    data = yaml.safe_load(hosts_file.read_text())
    data["all"]["hosts"][info.name]["ansible_port"] = info.ssh_port
    (directory / "known_hosts").write_text(f"[{info.ssh_host}]:{info.ssh_port} {info.host_key}\n")
    hosts_file.write_text(
        "# Generated for the VM CA host by ckms_lab.vm_host; do not edit.\n"
        + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    )
    lab_vars = directory / "group_vars" / "all" / "lab.yml"
    lab_vars.parent.mkdir(parents=True, exist_ok=True)
    lab_vars.write_text(
        "# Written by ckms_lab.vm_host: the hardening-relevant part of what scripts/lab-converge.sh writes\n"
        "# for the lab (no mirror reaches the VM; the ClamAV test signature stands in for real ones).\n"
        + yaml.safe_dump(LAB_HARDEN_VARS, sort_keys=False)
    )
    return hosts_file


#: Lab values no role defaults that ``ansible/harden.yml`` needs (as in scripts/lab-converge.sh).
LAB_HARDEN_VARS: dict[str, object] = {
    "os_hardening_updates_timers_enabled": False,
    "antimalware_clamav_test_signature": True,
}


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckms_lab.vm_host up|down|status|ssh-check|inventory``."""
    p = argparse.ArgumentParser(
        prog="python -m ckms_lab.vm_host", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("cmd", choices=("up", "down", "status", "ssh-check", "inventory"))
    p.add_argument("--out", type=Path, help="inventory: directory (default: the VM's state dir/inventory)")
    p.add_argument("--lab", default="lab")
    p.add_argument("--name", default="ca1")
    p.add_argument(
        "--accel", action="append", choices=sorted(CPU_MODELS), help="order to try (default kvm, tcg)"
    )
    p.add_argument("--kvm-deadline", type=float, default=90.0)
    p.add_argument("--tcg-deadline", type=float, default=900.0)
    p.add_argument("--memory", type=int, default=2048, help="MiB")
    p.add_argument("--ssh-port", type=int, default=0)
    p.add_argument("--image", type=Path, help="up: a disk other than build-vm-image.sh's (a candidate)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "up":
            spec = VmSpec(
                lab=a.lab,
                name=a.name,
                memory_mib=a.memory,
                accels=tuple(a.accel or ("kvm", "tcg")),
                deadlines={"kvm": a.kvm_deadline, "tcg": a.tcg_deadline},
                ssh_port=a.ssh_port,
                **({"image": str(a.image)} if a.image else {}),
            )
            print(json.dumps(asdict(up(spec)), indent=2))
        elif a.cmd == "down":
            print(json.dumps({"removed": down(a.lab, a.name)}))
        elif a.cmd == "status":
            print(json.dumps(status(a.lab, a.name), indent=2))
        elif a.cmd == "inventory":
            info = load(a.lab, a.name)
            if info is None:
                raise LabError(f"no VM {a.lab}/{a.name}: run up first")
            print(write_inventory(info, a.out or Path(info.state_dir) / "inventory"))
        else:
            info = load(a.lab, a.name)
            if info is None:
                raise LabError(f"no VM {a.lab}/{a.name}: run up first")
            facts = check(info)
            out = asdict(facts)
            out["failures"] = facts.failures()
            print(json.dumps(out, indent=2))
            return 1 if out["failures"] else 0
    except LabError as exc:
        print(f"ckms_lab.vm_host: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
