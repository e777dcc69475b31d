"""The VM CA host driver's pure parts: QEMU command line, seed script, parsers (no VM, no root needed).

Why: the secure boot guarantees rest on a handful of flags (SMM firmware, write-protected flash, the
Microsoft-keys variable store copied per VM); a refactor that drops one would still boot, only insecurely.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckms_lab import vm_host
from ckms_lab.hosts import AUTOMATION_USER, LabError


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> vm_host.VmSpec:
    monkeypatch.setenv("CKMS_LAB_ROOT", str(tmp_path / "labroot"))
    monkeypatch.setenv("CKMS_TOOL_CACHE", str(tmp_path / "cache"))
    return vm_host.VmSpec(lab="lab", name="ca1")


def test_qemu_command_enforces_secure_boot_firmware(spec: vm_host.VmSpec, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cmd = vm_host.qemu_command(spec, "tcg", state, 2222)
    joined = " ".join(cmd)
    assert cmd[cmd.index("-machine") + 1] == "q35,smm=on"
    assert "driver=cfi.pflash01,property=secure,value=on" in cmd
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={vm_host.OVMF_CODE}" in cmd
    assert vm_host.OVMF_CODE.name == "OVMF_CODE_4M.secboot.fd"
    # the VM's own copy of the variable store, never the package's file
    assert f"if=pflash,format=raw,unit=1,file={state / 'OVMF_VARS.fd'}" in cmd
    assert vm_host.OVMF_VARS.name == "OVMF_VARS_4M.ms.fd"
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined and "restrict=on" in joined
    assert f"file:{state / 'console.log'}" in cmd


def test_kvm_avoids_the_arch_capabilities_msr(spec: vm_host.VmSpec, tmp_path: Path) -> None:
    cmd = vm_host.qemu_command(spec, "kvm", tmp_path, 2222)
    assert cmd[cmd.index("-cpu") + 1] == "host,-arch-capabilities"


def test_state_dir_is_outside_the_nspawn_labs(spec: vm_host.VmSpec, tmp_path: Path) -> None:
    # "_vm" is no valid lab name, so `python -m ckms_lab.hosts destroy --all` never sweeps a running VM
    assert spec.state_dir == tmp_path / "labroot" / "_vm" / "lab" / "ca1"


def test_names_and_accelerators_are_checked() -> None:
    with pytest.raises(LabError):
        vm_host.VmSpec(lab="lab", name="CA_1", image="x")
    with pytest.raises(LabError):
        vm_host.VmSpec(lab="lab", name="ca1", accels=("hvf",), image="x")


def test_mac_is_stable_and_local(spec: vm_host.VmSpec) -> None:
    assert spec.mac == vm_host.VmSpec(lab="lab", name="ca1", image="x").mac
    assert spec.mac.startswith("52:54:00:") and len(spec.mac) == 17
    assert spec.mac != vm_host.VmSpec(lab="lab", name="ca2", image="x").mac


def test_provision_script_sets_identity_and_automation_account(spec: vm_host.VmSpec) -> None:
    script = vm_host.provision_script(spec, "ssh-ed25519 AAAAC3Nza ckms-lab-controller\n")
    assert 'echo ca1 >"$new/hostname"' in script and 'put 0644 "$new/hostname" /etc/hostname' in script
    # every boot runs it: files in /etc are replaced only when they differ (AIDE watches /etc's mtimes);
    # the one direct write is the first boot's sudo bootstrap, inside the account's creation
    assert re.findall(r">\s*/etc/\S+", script) == [f">/{vm_host.AUTOMATION_SUDOERS}"]
    assert "rm -f /etc/systemd/network/10-ckms-*" not in script
    # its scratch space is not /tmp, which systemd-tmpfiles empties at boot while this unit runs
    assert "mktemp -d /run/" in script and "mktemp -d\n" not in script
    assert f"useradd --system --uid {vm_host.AUTOMATION_UID}" in script
    assert f"echo 'ssh-ed25519 AAAAC3Nza ckms-lab-controller' >/var/lib/{AUTOMATION_USER}" in script
    assert f"{AUTOMATION_USER} ALL=(ALL:ALL) NOPASSWD: ALL" in script
    assert "rm -f /root/.ssh/authorized_keys" in script  # nobody logs in as root
    assert f"MACAddress={spec.mac}" in script and "Address=10.0.2.15/24" in script
    with pytest.raises(LabError):
        vm_host.provision_script(spec, "ssh-ed25519 AAAA 'x'")


def test_parse_efi_secure_boot_variable() -> None:
    assert vm_host.parse_efi_bool(bytes([6, 0, 0, 0, 1])) is True
    assert vm_host.parse_efi_bool(bytes([6, 0, 0, 0, 0])) is False
    assert vm_host.parse_efi_bool(b"") is None


def test_parse_auditctl_status() -> None:
    text = "enabled 1\nfailure 1\npid 312\nrate_limit 0\nbacklog_limit 8192\nlost 0\nbacklog 0\n"
    st = vm_host.parse_auditctl_status(text)
    assert st["enabled"] == 1 and st["pid"] == 312 and st["backlog_limit"] == 8192


def test_parse_aa_status() -> None:
    text = "apparmor module is loaded.\n12 profiles are loaded.\n10 profiles are in enforce mode.\n"
    assert vm_host.parse_aa_status(text) == (True, 10)
    assert vm_host.parse_aa_status("apparmor module is not loaded.\n") == (False, None)


def test_parse_sysctls_and_failures() -> None:
    assert vm_host.parse_sysctls("fs.protected_symlinks = 1\nkernel.kptr_restrict = 2\n") == {
        "fs.protected_symlinks": "1",
        "kernel.kptr_restrict": "2",
    }
    good = vm_host.KernelFacts(
        secure_boot=True,
        apparmor_enabled=True,
        audit_enabled=1,
        audit_pid=300,
        auditd_active="active",
        operator_actions=["type=USER_CMD msg=audit(...): cmd=ausearch"],
    )
    assert good.failures() == []
    bad = vm_host.KernelFacts(
        secure_boot=False, apparmor_enabled=True, audit_enabled=0, auditd_active="failed"
    )
    assert len(bad.failures()) == 4  # also: no operator action recorded


def test_probe_output_is_split_per_probe() -> None:
    script = vm_host.probe_script()
    assert all(f"echo '@@ckms-probe {key}'" in script for key in vm_host.PROBES)
    text = "@@ckms-probe efivar\n 6 0 0 0 1\n@@ckms-probe auditd\nactive\n@@ckms-probe mokutil\n"
    assert vm_host.split_probe_output(text) == {"efivar": "6 0 0 0 1", "auditd": "active", "mokutil": ""}


def test_inventory_names_the_vm_ca1_with_its_forwarded_port(spec: vm_host.VmSpec, tmp_path: Path) -> None:
    import yaml

    info = vm_host.VmInfo(
        lab="lab",
        name="ca1",
        role="ca",
        pid=1,
        accel="tcg",
        ssh_host="127.0.0.1",
        ssh_port=40022,
        host_key="ssh-ed25519 AAAAC3NzaTEST",
        boot_seconds=1.0,
        state_dir=str(tmp_path),
        attempts=[],
    )
    hosts_file = vm_host.write_inventory(info, tmp_path / "inv")
    inv = yaml.safe_load(hosts_file.read_text())["all"]
    assert inv["hosts"]["ca1"]["ansible_port"] == 40022
    assert inv["children"]["ca"]["hosts"] == {"ca1": None}
    # os_hardening binds the automation key to this address: it must be where the guest sees SSH from
    assert inv["vars"]["ckms_controller_address"] == "10.0.2.2/24"
    assert any(f["name"] == "est" for f in inv["vars"]["ckms_flows"])
    assert (tmp_path / "inv" / "known_hosts").read_text() == "[127.0.0.1]:40022 ssh-ed25519 AAAAC3NzaTEST\n"
    lab_vars = yaml.safe_load((tmp_path / "inv" / "group_vars" / "all" / "lab.yml").read_text())
    assert lab_vars["antimalware_clamav_test_signature"] is True


# ------------------------------------------------------------------ as a lab host (make lab LAB_CA=vm)
def _lab_spec(tmp_path: Path) -> vm_host.VmSpec:
    from ckms_lab.hosts import Nic

    return vm_host.VmSpec(
        lab="lv",
        name="ca1",
        image="x",
        nics=(
            Nic("mgmt0", "mgmt", "10.243.200.10/24"),
            Nic(
                "eth0",
                "ca",
                "10.243.10.10/24",
                gateway="10.243.10.1",
                routes=(("10.9.0.0/16", "10.243.10.2"),),
            ),
        ),
        netns="ckms-lv-ca1",
        state=str(tmp_path / "lv" / "ca1"),
        cgroups=("/sys/fs/cgroup/unified/ckms-lab/lv/ca1",),
    )


def test_lab_vm_has_one_tap_nic_per_lab_nic_and_no_user_network(tmp_path: Path) -> None:
    spec = _lab_spec(tmp_path)
    cmd = vm_host.qemu_command(spec, "tcg", spec.state_dir, 22)
    joined = " ".join(cmd)
    assert "user," not in joined and "hostfwd" not in joined
    netdevs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-netdev"]
    assert netdevs == [
        "tap,id=n0,ifname=tap-mgmt0,script=no,downscript=no",
        "tap,id=n1,ifname=tap-eth0,script=no,downscript=no",
    ]
    devices = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device" and "virtio-net" in cmd[i + 1]]
    macs = [d.split("mac=")[1] for d in devices]
    assert macs == [spec.nic_mac(n) for n in spec.nics] and len(set(macs)) == 2
    # secure boot stays as it is alone
    assert "driver=cfi.pflash01,property=secure,value=on" in cmd
    assert spec.state_dir == tmp_path / "lv" / "ca1" and spec.mgmt_address == "10.243.200.10"


def test_lab_vm_guest_gets_the_nspawn_hosts_addresses_and_names(tmp_path: Path) -> None:
    spec = _lab_spec(tmp_path)
    units = vm_host.network_units(spec)
    assert sorted(units) == ["10-ckms-eth0.network", "10-ckms-mgmt0.network"]
    eth0 = units["10-ckms-eth0.network"]
    assert f"MACAddress={spec.nic_mac(spec.nics[1])}" in eth0
    assert "Address=10.243.10.10/24" in eth0 and "Gateway=10.243.10.1" in eth0
    assert "[Route]\nDestination=10.9.0.0/16\nGateway=10.243.10.2" in eth0
    assert "Gateway" not in units["10-ckms-mgmt0.network"]  # the controller never routes for lab hosts
    script = vm_host.provision_script(spec, "ssh-ed25519 AAAA controller")
    assert "10.0.2.15" not in script  # no user-mode address
    for nic in spec.nics:  # renamed by MAC to the name an nspawn host's NIC has
        assert f"Name={nic.ifname}" in script and f"name {nic.ifname}" in script


def test_lab_vm_runs_qemu_in_the_hosts_netns_and_cgroups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _lab_spec(tmp_path)
    spec.state_dir.mkdir(parents=True)
    seen: list[list[str]] = []

    class _Proc:
        pid = 4242

    def fake_popen(cmd: list[str], **_kw: object) -> _Proc:
        seen.append(cmd)
        return _Proc()

    monkeypatch.setattr(vm_host.subprocess, "Popen", fake_popen)
    vm_host._start(spec, "tcg", spec.state_dir, 22)
    cmd = seen[0]
    assert cmd[:2] == ["/bin/sh", "-c"] and 'cgroup.procs"; exec "$@"' in cmd[2]
    assert spec.cgroups[0] in cmd[2]
    i = cmd.index("ip")
    assert cmd[i : i + 4] == ["ip", "netns", "exec", "ckms-lv-ca1"]
    assert cmd[i + 4 : i + 7] == ["nice", "-n", "19"] and "qemu-system" in cmd[i + 7]


def test_host_spec_knows_its_kind() -> None:
    from ckms_lab.hosts import HostSpec, Nic

    nics = [{"ifname": "mgmt0", "segment": "mgmt", "address": "10.243.0.11/24"}]
    d = {"lab": "lv", "name": "ca1", "role": "ca", "nics": nics, "authorized_key": "k", "image": "x"}
    assert HostSpec.from_dict(d).kind == "container"
    assert HostSpec.from_dict({**d, "kind": "vm"}).kind == "vm"
    with pytest.raises(LabError, match="kind"):
        HostSpec("lv", "ca1", "ca", (Nic("mgmt0", "mgmt", "10.243.0.11/24"),), "k", image="x", kind="lxc")
