"""The lab host driver: systemd-nspawn machines in their own network namespaces and cgroups.

One piece of code makes a lab host, whoever asks: the Pulumi dynamic provider (``ckms_lab.provider``)
for the ``lab`` stack and Molecule's delegated driver (through the CLI at the bottom of this module).

Topology primitives:

* a **segment** is an L2 switch: a bridge inside its own network namespace (``ckms-<lab>-sw-<seg>``),
  or, for the management network, a bridge in the controller's namespace carrying the controller's
  address. Management ports are *isolated*: hosts reach the controller but not each other, so the
  management network is never a path around the router.
* a **host** is a systemd-booted nspawn machine over an overlay of the golden image, in its own
  network namespace (``ckms-<lab>-<host>``) and its own cgroup subtree (without that, the machines'
  systemd instances fight over one cgroup), with one veth per NIC plugged into a segment.

Why not machinectl / systemd-run: PID 1 on the build machines is not systemd, so there is no
machined; ``--register=no --keep-unit`` and our own cgroup directories replace it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ckms_lab import paths

_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_IFNAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
HOST_KINDS = ("container", "vm")


class LabError(RuntimeError):
    """A lab operation failed; the message says what to check."""


# --------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Nic:
    """One network interface of a host, plugged into a segment."""

    ifname: str
    segment: str
    address: str  # CIDR, e.g. 10.231.10.10/24
    gateway: str | None = None
    routes: tuple[tuple[str, str], ...] = ()  # (destination CIDR, via)

    def __post_init__(self) -> None:
        if not _IFNAME.match(self.ifname):
            raise LabError(f"interface name {self.ifname!r} must match {_IFNAME.pattern}")
        ipaddress.ip_interface(self.address)


@dataclass(frozen=True)
class SegmentSpec:
    """An L2 segment. ``controller_address`` set means: bridge in the controller's namespace."""

    lab: str
    name: str
    controller_address: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.lab, "lab")
        _check_name(self.name, "segment")

    @property
    def netns(self) -> str | None:
        return None if self.controller_address else f"ckms-{self.lab}-sw-{self.name}"

    @property
    def bridge(self) -> str:
        return f"ck-{self.lab}-{self.name}"[:15] if self.controller_address else "br0"

    @property
    def nft_table(self) -> str:
        return f"ckms_lab_{self.lab}_{self.name}"


@dataclass(frozen=True)
class HostSpec:
    """A lab host: role, NICs, whether it forwards IPv4 (the router), the key allowed to log in."""

    lab: str
    name: str
    role: str
    nics: tuple[Nic, ...]
    authorized_key: str
    ip_forward: bool = False
    image: str = field(default_factory=lambda: str(paths.golden_rootfs()))
    #: ``container`` (systemd-nspawn on the golden root filesystem) or ``vm`` (QEMU booting the VM disk
    #: through OVMF with Secure Boot, ``ckms_lab.vm_host``; ``image`` is then that disk)
    kind: str = "container"

    def __post_init__(self) -> None:
        _check_name(self.lab, "lab")
        _check_name(self.name, "host")
        if not self.nics:
            raise LabError(f"host {self.name}: needs at least one NIC (the management one)")
        if self.kind not in HOST_KINDS:
            raise LabError(f"host {self.name}: kind {self.kind!r} is not one of {', '.join(HOST_KINDS)}")

    @property
    def netns(self) -> str:
        return f"ckms-{self.lab}-{self.name}"

    @property
    def machine(self) -> str:
        return f"{self.lab}-{self.name}"

    @property
    def state_dir(self) -> Path:
        return paths.lab_root() / self.lab / self.name

    @staticmethod
    def from_dict(d: dict) -> HostSpec:
        nics = tuple(
            Nic(
                ifname=n["ifname"],
                segment=n["segment"],
                address=n["address"],
                gateway=n.get("gateway"),
                routes=tuple(tuple(r) for r in n.get("routes", ())),
            )
            for n in d["nics"]
        )
        return HostSpec(
            lab=d["lab"],
            name=d["name"],
            role=d["role"],
            nics=nics,
            authorized_key=d["authorized_key"],
            ip_forward=bool(d.get("ip_forward", False)),
            image=d.get("image") or str(paths.golden_rootfs()),
            kind=d.get("kind") or "container",
        )


@dataclass(frozen=True)
class HostInfo:
    """What a created host reports back (stack outputs, inventory)."""

    lab: str
    name: str
    role: str
    netns: str
    pid: int
    mgmt_address: str
    addresses: dict[str, str]
    host_key: str
    state_dir: str


def _check_name(value: str, what: str) -> None:
    if not _NAME.match(value):
        raise LabError(f"{what} name {value!r} must match {_NAME.pattern} (it becomes part of link names)")


def _short(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------- helpers
def _run(args: Sequence[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return _run([*prefix, *args], check=check)


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _link_exists(name: str, netns: str | None = None) -> bool:
    return _ip("link", "show", "dev", name, netns=netns, check=False).returncode == 0


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("lab hosts need root (network namespaces, cgroups, systemd-nspawn)")
    for tool in ("ip", "systemd-nspawn", "nft", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: run scripts/bootstrap-host.sh")


# ------------------------------------------------------------------------------------------ segments
def create_segment(spec: SegmentSpec) -> dict:
    """Create (or re-create) a segment. Idempotent: an existing one is reused as is."""
    _require_root()
    if spec.netns:
        if not _netns_exists(spec.netns):
            _run(["ip", "netns", "add", spec.netns])
        if not _link_exists(spec.bridge, spec.netns):
            _ip("link", "add", spec.bridge, "type", "bridge", netns=spec.netns)
        _ip("link", "set", spec.bridge, "up", netns=spec.netns)
        # A switch, not a host: no addresses, no IPv6 autoconfiguration chatter.
        _run(["ip", "netns", "exec", spec.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
    else:
        assert spec.controller_address is not None
        if not _link_exists(spec.bridge):
            _ip("link", "add", spec.bridge, "type", "bridge")
        _run(["sysctl", "-qw", f"net.ipv6.conf.{spec.bridge}.disable_ipv6=1"])
        _ip("addr", "replace", spec.controller_address, "dev", spec.bridge)
        _ip("link", "set", spec.bridge, "up")
        # The controller never routes for lab hosts: nothing enters or leaves the management bridge
        # through the controller's forwarding path.
        _run(["nft", "delete", "table", "inet", spec.nft_table], check=False)
        _run(
            ["nft", "-f", "-"],
            input=(
                f"table inet {spec.nft_table} {{\n"
                "  chain forward {\n"
                "    type filter hook forward priority -10; policy accept;\n"
                f'    iifname "{spec.bridge}" drop\n'
                f'    oifname "{spec.bridge}" drop\n'
                "  }\n}\n"
            ),
        )
    return {"lab": spec.lab, "name": spec.name, "netns": spec.netns or "", "bridge": spec.bridge}


def destroy_segment(spec: SegmentSpec) -> None:
    """Remove a segment: its namespace (and so its bridge and ports) or the controller bridge."""
    _require_root()
    if spec.netns:
        if _netns_exists(spec.netns):
            _run(["ip", "netns", "del", spec.netns])
    else:
        if _link_exists(spec.bridge):
            _ip("link", "del", spec.bridge)
        _run(["nft", "delete", "table", "inet", spec.nft_table], check=False)


def _segment_for(lab: str, name: str) -> SegmentSpec:
    """Find how a segment was created: the controller bridge exists, or its namespace does."""
    root = SegmentSpec(lab, name, controller_address="0.0.0.0/32")
    if _link_exists(root.bridge):
        return root
    sw = SegmentSpec(lab, name)
    if sw.netns and _netns_exists(sw.netns):
        return sw
    raise LabError(f"segment {name!r} of lab {lab!r} does not exist: create it first")


# --------------------------------------------------------------------------------------------- hosts
def _cgroup_dirs(spec: HostSpec) -> list[Path]:
    return [root / "ckms-lab" / spec.lab / spec.name for root in CGROUP_ROOTS]


# The automation account (os_hardening's os_hardening_automation_*): what cloud-init or kickstart does for a
# production host, done here for a lab host. Same name and uid on every host; Ansible connects as it and
# becomes root through sudo. Nobody logs in as root: root gets no key.
AUTOMATION_USER = "ckms-automation"
AUTOMATION_UID = 900
AUTOMATION_HOME = "/var/lib/ckms-automation"
AUTOMATION_SHELL = "/bin/sh"
AUTOMATION_SUDOERS = "etc/sudoers.d/20-ckms-automation"


def _provision_automation_account(rootfs: Path, authorized_key: str) -> None:
    """Create the automation account in ``rootfs``: system user and group, locked password, the controller's
    key, and a bootstrap sudoers drop-in (NOPASSWD: Ansible is non-interactive) that os_hardening takes over
    (same path) with its logged, address-bound version."""
    passwd = (rootfs / "etc/passwd").read_text()
    if not any(line.split(":", 1)[0] == AUTOMATION_USER for line in passwd.splitlines()):
        uid = str(AUTOMATION_UID)
        _run(["groupadd", "--root", str(rootfs), "--system", "--gid", uid, AUTOMATION_USER])
        _run(
            [
                "useradd",
                "--root",
                str(rootfs),
                "--system",
                "--uid",
                uid,
                "--gid",
                uid,
                "--home-dir",
                AUTOMATION_HOME,
                "--create-home",
                "--shell",
                AUTOMATION_SHELL,
                "--comment",
                "CKMS automation (Ansible from the controller)",
                AUTOMATION_USER,
            ]
        )
    home = rootfs / AUTOMATION_HOME.lstrip("/")
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    keys = ssh / "authorized_keys"
    keys.write_text(authorized_key.strip() + "\n")
    keys.chmod(0o600)
    for path in (home, ssh, keys):
        os.chown(path, AUTOMATION_UID, AUTOMATION_UID)
    home.chmod(0o700)
    sudoers = rootfs / AUTOMATION_SUDOERS
    sudoers.write_text(
        "# Bootstrap (ckms_lab.hosts, as cloud-init would): os_hardening replaces it with its logged version.\n"
        f"{AUTOMATION_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    )
    sudoers.chmod(0o440)
    os.chown(sudoers, 0, 0)
    root_keys = rootfs / "root/.ssh/authorized_keys"
    if root_keys.exists():
        root_keys.unlink()


def _write_host_files(spec: HostSpec, rootfs: Path) -> str:
    """Give the overlay its identity; returns the SSH host public key (for known_hosts)."""
    (rootfs / "etc/hostname").write_text(f"{spec.name}\n")
    (rootfs / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {spec.name}", "::1 localhost ip6-localhost ip6-loopback"]
    (rootfs / "etc/hosts").write_text("\n".join(hosts) + "\n")
    net = rootfs / "etc/systemd/network"
    for old in net.glob("10-ckms-*.network"):
        old.unlink()
    for nic in spec.nics:
        lines = ["[Match]", f"Name={nic.ifname}", "", "[Network]", f"Address={nic.address}"]
        lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
        if nic.gateway:
            lines.append(f"Gateway={nic.gateway}")
        if spec.ip_forward:
            lines.append("IPForward=ipv4")
        for dest, via in nic.routes:
            lines += ["", "[Route]", f"Destination={dest}", f"Gateway={via}"]
        (net / f"10-ckms-{nic.ifname}.network").write_text("\n".join(lines) + "\n")
    _provision_automation_account(rootfs, spec.authorized_key)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"root@{spec.name}",
            "-f",
            str(rootfs / "etc/ssh/ssh_host_ed25519_key"),
        ]
    )
    # sshd offers only the key we recorded, so known_hosts pins exactly one key per host.
    (rootfs / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (rootfs / "etc/ssh/sshd_config.d/00-ckms-lab.conf").write_text("HostKey /etc/ssh/ssh_host_ed25519_key\n")
    return " ".join((rootfs / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])


def _plug(spec: HostSpec, nic: Nic) -> None:
    """Create the veth pair of one NIC: host end in the host's netns, switch end on the segment."""
    seg = _segment_for(spec.lab, nic.segment)
    tag = _short(spec.lab, spec.name, nic.ifname)
    a, b = f"ckv{tag}", f"ckp{tag}"
    for stale in (a, b):
        if _link_exists(stale):
            _ip("link", "del", stale)
    _ip("link", "add", a, "type", "veth", "peer", "name", b)
    for end in (a, b):  # the alias says whose link it is (lab_footprint lists by it)
        _ip("link", "set", "dev", end, "alias", f"ckms:{spec.lab}:{spec.name}")
    _ip("link", "set", a, "netns", spec.netns, "name", nic.ifname)
    if seg.netns:
        port = f"{spec.name}-{nic.ifname}"[:15]
        _ip("link", "set", b, "netns", seg.netns, "name", port)
        _ip("link", "set", port, "master", seg.bridge, "up", netns=seg.netns)
    else:
        _ip("link", "set", b, "master", seg.bridge, "up")
        # Management ports talk to the controller only, never to each other.
        _run(["bridge", "link", "set", "dev", b, "isolated", "on"])


def _mgmt_nic(spec: HostSpec) -> Nic:
    for nic in spec.nics:
        if _segment_for(spec.lab, nic.segment).netns is None:
            return nic
    raise LabError(f"host {spec.name}: no NIC on a controller-side (management) segment")


def _wait_for_ssh(address: str, proc: subprocess.Popen, log: Path, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise LabError(f"systemd-nspawn exited with {proc.returncode} during boot:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((address, 22), timeout=1) as s:
            if s.recv(4).startswith(b"SSH-"):
                return
        time.sleep(0.3)
    raise LabError(f"no SSH banner from {address} within {timeout:.0f} s (console log {log})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


#: inotify limits per user on the machine: every lab host's systemd (path units, journald, udev) takes
#: instances as root, and all hosts of all labs share root's budget. Debian's default of 128 instances
#: is used up by about a dozen hosts (two labs and a Molecule scenario), after which path units and
#: wg-quick fail to start in whichever host comes last.
INOTIFY_LIMITS = {"max_user_instances": 1024, "max_user_watches": 524288}


def _raise_inotify_limits() -> None:
    """Raise the machine's inotify limits to :data:`INOTIFY_LIMITS` (never lowers them)."""
    for name, want in INOTIFY_LIMITS.items():
        path = Path("/proc/sys/fs/inotify") / name
        try:
            if int(path.read_text()) < want:
                path.write_text(str(want))
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot raise fs.inotify.{name} to {want}: {exc}") from None


def create_host(spec: HostSpec) -> HostInfo:
    """Create and boot one host; returns once its sshd answers on the management address.

    Idempotent by replacement: leftovers of a host with the same name (from a crashed run or a
    killed CI job) are destroyed first, so create always yields a freshly booted machine.
    """
    _require_root()
    _raise_inotify_limits()
    if spec.kind == "vm":
        return _create_vm_host(spec)
    image = Path(spec.image)
    if not (image / "usr/lib/systemd/systemd").exists() and not (image / "lib/systemd/systemd").exists():
        raise LabError(f"golden image {image} missing or incomplete: run scripts/build-golden-image.sh")
    destroy_host(spec.lab, spec.name)

    state = spec.state_dir
    rootfs, upper, work = state / "rootfs", state / "upper", state / "work"
    for d in (rootfs, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    _run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={image},upperdir={upper},workdir={work}",
            str(rootfs),
        ]
    )
    try:
        host_key = _write_host_files(spec, rootfs)
        _network_namespace(spec)
        cgroups = _cgroup_dirs(spec)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        log = state / "console.log"
        env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")

        nspawn = [
            "systemd-nspawn",
            "--boot",
            "--directory",
            str(rootfs),
            "--machine",
            spec.machine,
            "--register=no",
            "--keep-unit",
            "--capability=CAP_NET_ADMIN",
            f"--network-namespace-path=/run/netns/{spec.netns}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
        ]
        # The shell moves itself into the host's cgroups, then becomes nspawn. Not a preexec_fn:
        # the dynamic provider runs gRPC threads, and Python code between fork and exec in a
        # threaded process can crash the child (seen here as SIGSEGV).
        enter = "; ".join(f'echo $$ >"{cg}/cgroup.procs"' for cg in cgroups)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", f'{enter}; exec "$@"', "ckms-lab-boot", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        info = _record_host(spec, proc.pid, host_key)
        _wait_for_ssh(info.mgmt_address, proc, log)
        return info
    except BaseException:
        destroy_host(spec.lab, spec.name)
        raise


def _create_vm_host(spec: HostSpec) -> HostInfo:
    """A host of kind ``vm``: the same namespace and veth NICs as a container, each veth end bridged
    inside the namespace to a TAP that QEMU opens (``ckms_lab.vm_host``), QEMU in the host's cgroups."""
    from ckms_lab import vm_host  # imports this module: late, to keep the import graph acyclic

    if spec.ip_forward:
        raise LabError(f"host {spec.name}: a VM host does not route (ip_forward is for the nspawn router)")
    destroy_host(spec.lab, spec.name)
    state = spec.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    try:
        _network_namespace(spec)
        _run(["ip", "netns", "exec", spec.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        for nic in spec.nics:
            tap, br = vm_host.tap_name(nic), vm_host.nic_bridge(nic)
            _ip("tuntap", "add", "dev", tap, "mode", "tap", netns=spec.netns)
            _ip("link", "add", br, "type", "bridge", netns=spec.netns)
            for port in (tap, nic.ifname):
                _ip("link", "set", port, "master", br, "up", netns=spec.netns)
            _ip("link", "set", br, "up", netns=spec.netns)
        cgroups = _cgroup_dirs(spec)
        for cg in cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        vm = vm_host.up(
            vm_host.VmSpec(
                lab=spec.lab,
                name=spec.name,
                role=spec.role,
                image=spec.image,
                nics=spec.nics,
                netns=spec.netns,
                state=str(state),
                cgroups=tuple(str(cg) for cg in cgroups),
            )
        )
        return _record_host(spec, vm.pid, vm.host_key, vm=asdict(vm))
    except BaseException:
        destroy_host(spec.lab, spec.name)
        raise


def _network_namespace(spec: HostSpec) -> None:
    """The host's network namespace with loopback up and one veth NIC per ``spec.nics`` on its segment."""
    _run(["ip", "netns", "add", spec.netns])
    _ip("link", "set", "lo", "up", netns=spec.netns)
    for nic in spec.nics:
        _plug(spec, nic)


def _record_host(spec: HostSpec, pid: int, host_key: str, **extra: object) -> HostInfo:
    """What a created host reports, also written to its ``host.json`` (listing, destroy)."""
    info = HostInfo(
        lab=spec.lab,
        name=spec.name,
        role=spec.role,
        netns=spec.netns,
        pid=pid,
        mgmt_address=str(ipaddress.ip_interface(_mgmt_nic(spec).address).ip),
        addresses={n.segment: str(ipaddress.ip_interface(n.address).ip) for n in spec.nics},
        host_key=host_key,
        state_dir=str(spec.state_dir),
    )
    (spec.state_dir / "host.json").write_text(
        json.dumps({"spec": _spec_dict(spec), "info": asdict(info), **extra}, indent=2)
    )
    return info


def _spec_dict(spec: HostSpec) -> dict:
    d = asdict(spec)
    d["nics"] = [asdict(n) for n in spec.nics]
    return d


def _cgroup_pids(cg: Path) -> Iterator[int]:
    if not cg.exists():
        return
    for procs in cg.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for line in procs.read_text().split():
                yield int(line)


def _rmdir_tree(cg: Path) -> None:
    if not cg.exists():
        return
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    cg.rmdir()


def destroy_host(lab: str, name: str) -> bool:
    """Power a host off and remove every trace: processes, cgroups, netns, links, mounts, files.

    Returns whether anything was there. Safe to call for a host that never existed.
    """
    _require_root()
    _check_name(lab, "lab")
    _check_name(name, "host")
    state = paths.lab_root() / lab / name
    netns = f"ckms-{lab}-{name}"
    cgroups = [root / "ckms-lab" / lab / name for root in CGROUP_ROOTS]
    found = state.exists() or _netns_exists(netns) or any(cg.exists() for cg in cgroups)
    if not found:
        return False

    # 1. Clean poweroff: SIGTERM to nspawn makes the container's systemd shut down.
    pid = 0
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        pid = int(json.loads((state / "host.json").read_text())["info"]["pid"])
    members = set(_cgroup_pids(cgroups[0]))
    if pid and pid in members and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
    # 2. Whatever is still in the host's cgroups is killed: nothing of the lab may outlive it.
    for _ in range(50):
        left = {p for cg in cgroups for p in _cgroup_pids(cg)}
        if not left:
            break
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.1)
    else:
        raise LabError(f"processes {sorted(left)} of host {name} survive SIGKILL")
    # Reap our own child if nspawn was started by this process.
    with contextlib.suppress(ChildProcessError, OSError):
        if pid:
            os.waitpid(pid, os.WNOHANG)
    for cg in cgroups:
        _rmdir_tree(cg)
        with contextlib.suppress(OSError):  # the lab's parent dirs go when they are empty
            cg.parent.rmdir()
            cg.parent.parent.rmdir()
    # 3. Network: the namespace takes its veth ends (and so the peers) with it.
    if _netns_exists(netns):
        _run(["ip", "netns", "del", netns])
    for nic_tag in _stale_links(lab, name):
        _ip("link", "del", nic_tag, check=False)
    # 4. Files: unmount the overlay, then remove the host directory.
    rootfs = state / "rootfs"
    if os.path.ismount(rootfs):
        _run(["umount", str(rootfs)])
    if state.exists():
        shutil.rmtree(state)
    with contextlib.suppress(OSError):
        state.parent.rmdir()
    return True


def _stale_links(lab: str, name: str) -> list[str]:
    """Root-namespace veth ends left by a create that died half way."""
    out = _ip("-o", "link", "show", check=False).stdout
    names = {m.group(1).split("@")[0] for m in re.finditer(r"^\d+: ([^:]+):", out, re.M)}
    tags = {_short(lab, name, ifname) for ifname in ("mgmt0", "eth0", "eth1", "eth2", "eth3")}
    return [n for n in names if n[3:] in tags and n[:3] in ("ckv", "ckp")]


# ------------------------------------------------------------------------------------------- listing
def list_hosts(lab: str | None = None) -> list[dict]:
    """Every host the driver knows of (optionally one lab's), with whether it is running."""
    out = []
    root = paths.lab_root()
    if not root.exists():
        return out
    for hj in sorted(root.glob("*/*/host.json")):
        data = json.loads(hj.read_text())
        info = data["info"]
        if lab and info["lab"] != lab:
            continue
        info["kind"] = (data.get("spec") or {}).get("kind") or "container"
        info["running"] = _alive(info["pid"]) and info["pid"] in set(
            _cgroup_pids(CGROUP_ROOTS[0] / "ckms-lab" / info["lab"] / info["name"])
        )
        out.append(info)
    return out


def lab_footprint(lab: str) -> dict[str, list[str]]:
    """Everything of one lab visible on the machine: what ``make lab-down`` must leave empty."""
    prefix = f"ckms-{lab}-"
    netns = (
        sorted(p.name for p in Path("/run/netns").glob(f"{prefix}*")) if Path("/run/netns").exists() else []
    )
    links = _ip("-o", "link", "show", check=False).stdout
    link_names = sorted(
        m.group(1).split("@")[0]
        for m in re.finditer(r"^\d+: ([^:]+):.*$", links, re.M)
        if m.group(1).startswith(f"ck-{lab}-"[:15]) or f"alias ckms:{lab}:" in m.group(0)
    )
    cgroups = sorted(str(p) for root in CGROUP_ROOTS for p in [root / "ckms-lab" / lab] if p.exists())
    procs = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ("systemd-nspawn" in cmd and f"--machine {lab}-" in cmd) or f"-name ckms-{lab}-" in cmd:
                procs.append(f"{pid_dir.name} {cmd.strip()}")
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(paths.lab_root() / lab) + "/")
    ]
    dirs = [str(paths.lab_root() / lab)] if (paths.lab_root() / lab).exists() else []
    return {
        "netns": netns,
        "links": link_names,
        "cgroups": cgroups,
        "processes": procs,
        "mounts": mounts,
        "directories": dirs,
    }


# ----------------------------------------------------------------------------------------------- CLI
def _parse_nic(text: str) -> Nic:
    """``IFNAME=SEGMENT:ADDRESS/PREFIX[:GATEWAY]``."""
    try:
        ifname, rest = text.split("=", 1)
        parts = rest.split(":")
        return Nic(
            ifname=ifname, segment=parts[0], address=parts[1], gateway=parts[2] if len(parts) > 2 else None
        )
    except (ValueError, IndexError) as exc:
        raise LabError(f"bad --nic {text!r}: expected IFNAME=SEGMENT:ADDRESS/PREFIX[:GATEWAY]") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckms_lab.hosts create|destroy|list|segment-create|segment-destroy|footprint``."""
    p = argparse.ArgumentParser(prog="python -m ckms_lab.hosts", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create and boot a host (replaces one of the same name)")
    c.add_argument("--lab", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--role", default="generic")
    c.add_argument("--mgmt", required=True, help="management address, e.g. 10.231.200.10/24")
    c.add_argument("--mgmt-segment", default="mgmt")
    c.add_argument(
        "--controller-address",
        default=None,
        help="create the management segment with this controller address if missing",
    )
    c.add_argument("--nic", action="append", default=[], help="IFNAME=SEGMENT:ADDRESS/PREFIX[:GATEWAY]")
    c.add_argument("--ip-forward", action="store_true")
    c.add_argument("--kind", choices=HOST_KINDS, default="container", help="vm: QEMU (ckms_lab.vm_host)")
    d = sub.add_parser("destroy", help="destroy hosts (and with --all the lab's segments)")
    d.add_argument("--lab", required=True)
    d.add_argument("--name", action="append", default=[])
    d.add_argument("--all", action="store_true")
    ls = sub.add_parser("list", help="list hosts as JSON")
    ls.add_argument("--lab")
    sc = sub.add_parser("segment-create")
    sc.add_argument("--lab", required=True)
    sc.add_argument("--name", required=True)
    sc.add_argument("--controller-address")
    sd = sub.add_parser("segment-destroy")
    sd.add_argument("--lab", required=True)
    sd.add_argument("--name", required=True)
    fp = sub.add_parser("footprint", help="everything of a lab left on the machine, as JSON")
    fp.add_argument("--lab", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "create":
            if a.controller_address:
                create_segment(SegmentSpec(a.lab, a.mgmt_segment, controller_address=a.controller_address))
            nics = (Nic("mgmt0", a.mgmt_segment, a.mgmt), *(_parse_nic(n) for n in a.nic))
            spec = HostSpec(
                lab=a.lab,
                name=a.name,
                role=a.role,
                nics=nics,
                authorized_key=paths.ssh_public_key(),
                ip_forward=a.ip_forward,
                image=str(paths.vm_image() if a.kind == "vm" else paths.golden_rootfs()),
                kind=a.kind,
            )
            print(json.dumps(asdict(create_host(spec)), indent=2))
        elif a.cmd == "destroy":
            names = a.name or ([h["name"] for h in list_hosts(a.lab)] if a.all else [])
            if a.all:
                names = sorted(set(names) | {p.name for p in (paths.lab_root() / a.lab).glob("*")})
            for n in names:
                destroy_host(a.lab, n)
            if a.all:
                _destroy_lab_segments(a.lab)
        elif a.cmd == "list":
            print(json.dumps(list_hosts(a.lab), indent=2))
        elif a.cmd == "segment-create":
            print(json.dumps(create_segment(SegmentSpec(a.lab, a.name, a.controller_address))))
        elif a.cmd == "segment-destroy":
            destroy_segment(_segment_for(a.lab, a.name))
        elif a.cmd == "footprint":
            print(json.dumps(lab_footprint(a.lab), indent=2))
    except LabError as exc:
        print(f"ckms_lab.hosts: {exc}", file=sys.stderr)
        return 1
    return 0


def _destroy_lab_segments(lab: str) -> None:
    for ns in Path("/run/netns").glob(f"ckms-{lab}-sw-*") if Path("/run/netns").exists() else []:
        destroy_segment(SegmentSpec(lab, ns.name.removeprefix(f"ckms-{lab}-sw-")))
    out = _ip("-o", "link", "show", "type", "bridge", check=False).stdout
    for m in re.finditer(r"^\d+: ([^:@]+)", out, re.M):
        if m.group(1).startswith(f"ck-{lab}-"):
            seg = m.group(1).removeprefix(f"ck-{lab}-")
            destroy_segment(SegmentSpec(lab, seg, controller_address="0.0.0.0/32"))


if __name__ == "__main__":
    sys.exit(main())
