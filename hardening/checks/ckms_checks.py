"""Helpers shared by the hardening check modules (not a test module: pytest does not collect it).

``policy(host, name)`` is the value a role applies: the host's inventory variable when set, else the
default of the role the variable belongs to (variables are role-prefixed: ``audit_*`` comes from
``roles/audit/defaults/main.yml``), so a role and its checks cannot drift apart silently.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"


@cache
def role_defaults(role: str) -> dict[str, Any]:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


@cache
def _roles() -> tuple[str, ...]:
    # longest first, so ckms_ca_* is not taken for a role "ckms"
    return tuple(
        sorted((p.name for p in ROLES_DIR.iterdir() if (p / "defaults").is_dir()), key=len, reverse=True)
    )


def role_of(name: str) -> str | None:
    return next((r for r in _roles() if name.startswith(r + "_")), None)


def inventory_vars(host) -> dict[str, Any]:
    try:
        return host.ansible.get_variables()
    except Exception:  # not an ansible backend (local://, ssh://)
        return {}


def policy(host, name: str, role: str | None = None):
    """Inventory variable ``name`` if set, else the default of ``role`` (by default: the name's prefix)."""
    inv = inventory_vars(host)
    if name in inv:
        return inv[name]
    role = role or role_of(name)
    return role_defaults(role).get(name) if role else None


def in_container(host) -> bool:
    out = host.run("systemd-detect-virt --container")
    return out.rc == 0 and out.stdout.strip() not in ("", "none")


# --- the CA host ----------------------------------------------------------------------------------
CA_USER = "ckms"
CA_HOME = "/var/lib/ckms"
CA_VENV = "/opt/ckms/venv"
SOFTHSM_CONF = f"{CA_HOME}/hsm/softhsm2.conf"
_PROBE = Path(__file__).resolve().parent / "ckms_probe.py"
TERMINAL_DIR = "/etc/ckms-terminal"


def group_host(request, group: str):
    """The first host of an inventory group as a testinfra host, or None when the group is empty."""
    import testinfra
    from testinfra.utils.ansible_runner import AnsibleRunner

    inv = request.config.getoption("ansible_inventory")
    hosts = AnsibleRunner(inv).get_hosts(group)
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inv) if hosts else None


def enrolled_operator(terminal) -> str | None:
    """An operator enrolled on the terminal (their own account, key and certificate), or None."""
    out = terminal.run(f"ls {TERMINAL_DIR}/people")
    for name in sorted(out.stdout.split()):
        if name.startswith("operator-") and terminal.file(f"{TERMINAL_DIR}/people/{name}/cert.pem").exists:
            return name
    return None


def ca_setting(host, name: str, default: str) -> str:
    """One ``name = value`` of the CA's ckms.toml (first occurrence; quotes removed)."""
    m = re.search(
        rf"^{re.escape(name)}\s*=\s*(.+?)\s*$", host.file(f"{CA_HOME}/ckms.toml").content_string, re.M
    )
    return m.group(1).strip('"') if m else default


def ca_tables(host) -> dict[str, Any]:
    """The ``[ca]`` table of the CA's ckms.toml (active key, and after a rollover ``next``/``retired``)."""
    return dict(tomllib.loads(host.file(f"{CA_HOME}/ckms.toml").content_string).get("ca", {}))


def active_ca_cert(host) -> str:
    """Path of the active key generation's CA certificate on the CA host (``ca/ca.pem`` until a rollover,
    then ``ca/g<n>/ca.pem``): what certificates issued now chain to."""
    cert = str(ca_tables(host).get("cert", "ca/ca.pem"))
    return cert if cert.startswith("/") else f"{CA_HOME}/{cert}"


def crl_path(host, which: str = "full") -> str:
    """The URL path of the active key generation's CRL (``/crl/full.crl`` for the first key, ``/crl/g<n>/``
    after a rollover): the CRL that lists what the CA issues now (ServerConfig.crl_url)."""
    generation = int(ca_tables(host).get("generation", 1))
    return f"/crl/{which}.crl" if generation == 1 else f"/crl/g{generation}/{which}.crl"


def as_ckms(host, command: str, env: dict[str, str] | None = None):
    """Run ``command`` (a shell command line) as the CA service user with the CA's environment."""
    extra = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return host.run(
        f"runuser -u {CA_USER} -- env CKMS_HOME={CA_HOME} SOFTHSM2_CONF={SOFTHSM_CONF} {extra} "
        f"sh -c {shlex.quote(command)}"
    )


def probe(host, *args: str, env: dict[str, str] | None = None, script: Path | str = _PROBE) -> dict[str, Any]:
    """Run a probe script (default hardening/checks/ckms_probe.py; ``script`` may name another file of
    this directory) on the host with the CA's python, as the CA user; its JSON.

    Raises AssertionError (with stderr) when the probe fails, so the calling check fails naming why."""
    path = Path(script) if Path(script).is_absolute() else _PROBE.parent / script
    code = base64.b64encode(path.read_bytes()).decode()
    argv = " ".join(shlex.quote(a) for a in args)
    out = as_ckms(host, f'cd / && {CA_VENV}/bin/python -c "$(echo {code} | base64 -d)" {argv}', env)
    assert out.rc == 0, f"probe {args[0]} failed on the host (rc={out.rc}): {out.stderr.strip()[-800:]}"
    return json.loads(out.stdout)


def systemd_props(host, unit: str, *props: str) -> dict[str, str]:
    out = host.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def host_now(host) -> str:
    """The host's clock (UTC, seconds): the lower bound for "records made by this check"."""
    return host.run("date -u +%Y-%m-%dT%H:%M:%S").stdout.strip()


def trail_since(host, since: str) -> list[dict]:
    """The CA's audit records since ``since`` (at most 500), read on the host by the probe."""
    return probe(host, "trail", "--since", since, "--limit", "500")["records"]


def short_records(records: list[dict]) -> list[dict]:
    """The fields of audit records a check shows as evidence."""
    return [
        {k: r.get(k) for k in ("seq", "entity_id", "role", "action", "target", "outcome")} for r in records
    ]
