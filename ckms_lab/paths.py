"""Where the lab keeps per-machine things, and the controller's SSH key.

Everything secret or machine-specific (SSH key, Pulumi passphrase, golden image, built CLI) lives in
the per-machine cache, never in the repository, so a clone carries no credentials.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The per-machine tool cache (``$CKMS_TOOL_CACHE``, default ``~/.cache/ckms``)."""
    return Path(os.environ.get("CKMS_TOOL_CACHE") or Path.home() / ".cache" / "ckms")


def lab_root() -> Path:
    """Directory holding every lab host's state (overlay layers, console log, host.json).

    Machine-wide rather than per checkout because network namespaces and cgroups are machine-wide:
    two checkouts must see (and clean up) the same hosts.
    """
    return Path(os.environ.get("CKMS_LAB_ROOT") or "/var/lib/ckms-lab")


def golden_rootfs() -> Path:
    """The golden bookworm root filesystem built by ``scripts/build-golden-image.sh``."""
    return cache_dir() / "lab" / "golden-bookworm" / "rootfs"


def vm_image() -> Path:
    """The VM host disk built by ``scripts/build-vm-image.sh`` (golden image plus the signed boot chain)."""
    return cache_dir() / "lab" / "vm-bookworm" / "disk.qcow2"


def vm_stamp() -> str:
    """The VM disk's build stamp; a change means VM hosts must be recreated from the new disk."""
    try:
        return (vm_image().parent / ".build-stamp").read_text().strip()
    except FileNotFoundError:
        return ""


def golden_stamp() -> str:
    """The golden image's build stamp; a change means hosts must be recreated from the new image."""
    try:
        return (golden_rootfs().parent / ".build-stamp").read_text().strip()
    except FileNotFoundError:
        return ""


def ssh_key() -> Path:
    """The controller's private key for lab hosts, generated once per machine (0600).

    Why per machine: a committed key would let anyone who can reach a lab host log in to it.
    """
    key = cache_dir() / "lab" / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ckms-lab-controller", "-f", str(key)],
            check=True,
        )
    key.chmod(0o600)
    return key


def ssh_public_key() -> str:
    """The public half of :func:`ssh_key`, as one authorized_keys line."""
    return ssh_key().with_suffix(".pub").read_text().strip()
