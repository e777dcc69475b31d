"""The CA's key generations in ckms.toml: the one writer of ``[ca]``, ``[ca.next]`` and ``[[ca.retired]]``.

Why one writer: ``ckms ca rollover begin`` and ``activate`` and ``ckms hsm destroy-key`` all change these
tables, and each change must (1) leave a file the loader accepts, (2) never be seen half-written by a
daemon that starts meanwhile, and (3) be followed by a new self-test manifest, because the manifest covers
ckms.toml and is verified under the active CA certificate at every daemon start (E.32).
Paths inside the CA home are written relative to it, as ``ca init`` writes them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.engine import Connection

from ckms_app.authority.ca_bundle import load_certificate
from ckms_app.authority.selftest import record_manifest
from ckms_app.config import CONFIG_NAME, CaGeneration, Config, parse_config, read_raw_config
from ckms_app.errors import CkmsError, HsmError
from ckms_app.hsm.token import HsmEcPrivateKey
from ckms_app.store.queries import bump_entity_generation
from ckms_app.store.schema import role_permissions


def load_ca_cert(path: Path) -> x509.Certificate:
    return load_certificate(path, "CA certificate")


def _relative(home: Path, path: Path) -> str:
    try:
        return path.relative_to(home).as_posix()
    except ValueError:
        return str(path)


def _table(home: Path, gen: CaGeneration) -> dict[str, Any]:
    table: dict[str, Any] = {"generation": gen.generation, "key_label": gen.key_label}
    table["cert"] = _relative(home, gen.cert)
    if gen.links is not None:
        table["links"] = _relative(home, gen.links)
    return table


def write_ca_tables(
    home: Path,
    active: CaGeneration,
    next_gen: CaGeneration | None,
    retired: Sequence[CaGeneration],
    curve: str | None = None,
) -> Config:
    """Rewrite the key generations of ``[ca]`` (``[ca.next]``, ``[[ca.retired]]``), keeping every other
    setting; the one writer of these tables. The result is parsed before the file is replaced (a table the
    loader would refuse never reaches the disk), and replaced atomically with the file's mode kept."""
    raw = read_raw_config(home)
    ca = raw["ca"]
    for key in ("next", "retired", "links"):
        ca.pop(key, None)
    ca.update(_table(home, active))
    if curve is not None:
        ca["curve"] = curve
    if next_gen is not None:
        ca["next"] = _table(home, next_gen)
    if retired:
        ca["retired"] = [_table(home, g) for g in sorted(retired, key=lambda g: g.generation)]
    config = parse_config(home, raw)
    path = home / CONFIG_NAME
    tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
    mode = stat.S_IMODE(path.stat().st_mode)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # exactly the old mode, whatever the umask
    with os.fdopen(fd, "w") as f:
        f.write(tomli_w.dumps(raw))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return config


def rerecord_manifest(config: Config, key: HsmEcPrivateKey, actor: str) -> Path:
    """The manifest covers ckms.toml: sign it again (with the active key) right after the tables change."""
    try:
        return record_manifest(config, key, recorded_by=actor)
    except (CkmsError, OSError) as exc:  # the file already changed: say how to finish by hand
        raise HsmError(
            f"ckms.toml was changed but the self-test manifest could not be signed again ({exc}); "
            "run 'ckms selftest --record' before the daemon starts"
        ) from exc


def grant_like(conn: Connection, old_label: str, new_label: str) -> None:
    """Give key ``new_label`` every ACL grant key ``old_label`` has (a rollover's new CA key is administered
    as the old one was), and tell every worker to reload its principals."""
    rows = conn.execute(
        select(role_permissions.c.role, role_permissions.c.operation).where(
            role_permissions.c.resource == f"key:{old_label}"
        )
    ).all()
    held = {
        (r.role, r.operation)
        for r in conn.execute(
            select(role_permissions.c.role, role_permissions.c.operation).where(
                role_permissions.c.resource == f"key:{new_label}"
            )
        )
    }
    new = [
        {"role": r.role, "operation": r.operation, "resource": f"key:{new_label}"}
        for r in rows
        if (r.role, r.operation) not in held
    ]
    if new:
        conn.execute(role_permissions.insert(), new)
        bump_entity_generation(conn)


def revoke_key_grants(conn: Connection, label: str) -> None:
    """Take every ACL grant on a destroyed key away (the ACL names only keys in the token, E.06)."""
    conn.execute(role_permissions.delete().where(role_permissions.c.resource == f"key:{label}"))
    bump_entity_generation(conn)
