"""CA key rollover inside one CA home, under 2-of-3 custody (issue 14 part 3; docs/ca-key-rollover.md).

Why a rollover and not a new CA home: certificates already in the field name this CA (its subject DN) and its
CRL addresses, so the CA keeps its name and its home and only its key changes. The steps:

``begin``
    A new key pair in the token (generated in an SO session, so the token itself checks the custodians), a
    CA certificate for it with the *same subject* and profile as the active one, and both link certificates
    (RFC 4210 §4.4): NewWithOld signed by the active key, OldWithNew by the new key. They go to
    ``ca/g<n>/ca.pem`` and ``ca/g<n>/links.pem`` and the generation to ``[ca.next]``: relying parties can be
    given the new certificate before anything is signed with it. A CA under an external root cannot certify
    its own new key: ``begin`` writes a request instead and ``import_certificate`` finishes the step with the
    root's answer.
``activate``
    ``[ca.next]`` becomes ``[ca]`` (new issuance under the new key) and the old generation a
    ``[[ca.retired]]`` entry (it signs the CRLs of what it issued, nothing else).
Then, once nothing the old key issued can still need a CRL from it, ``ckms hsm destroy-key`` destroys it:
the gate is :mod:`ckms_app.authority.rollover_gate`, the ckms.toml writer :mod:`ckms_app.authority.ca_tables`.

Every signature goes through :func:`~ckms_app.authority.signer.open_signer` (guard → lint → HSM), one signer
per key. ckms.toml is covered by the self-test manifest (signed by the active key), so every change to its
``[ca]`` tables re-records the manifest; otherwise the daemon's integrity self-test would refuse to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Connection

from ckms_app.algorithms import curve_by_name, curve_of
from ckms_app.authority.ca_tables import grant_like, load_ca_cert, rerecord_manifest, write_ca_tables
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.selftest import integrity_test
from ckms_app.authority.signer import open_signer
from ckms_app.config import CaGeneration, Config
from ckms_app.errors import ConfigError, HsmError, SelfTestFailed
from ckms_app.hsm import admin as hsm_admin
from ckms_app.hsm.custody import CustodySecret
from ckms_app.hsm.token import HsmEcPrivateKey, Token
from ckms_app.store.engine import open_engine
from ckms_app.store.schema import certificates, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.key_ids import subject_key_id
from ckms_app.x509.profiles import ca_builder, link_builder, validity_problems

PENDING_NAME = "pending.json"  # ca/g<n>/: a begun generation waiting for the external root's certificate
RESTART = "restart the daemon so that it loads the new [ca] tables: systemctl restart ckms-ca"
_PEM = serialization.Encoding.PEM


def generation_dir(home: Path, generation: int) -> Path:
    return home / "ca" / f"g{generation}"


def next_label(active_label: str, generation: int) -> str:
    """``<label>-g<n>``, from the label without an earlier generation's suffix (no ``-g2-g3``)."""
    return f"{re.sub(r'-g[0-9]+$', '', active_label)}-g{generation}"


def _pending_path(config: Config) -> Path:
    return generation_dir(config.home, config.ca_generation + 1) / PENDING_NAME


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(_PEM) for c in certs)


def _write_public(path: Path, data: bytes) -> None:
    """Certificates are public (0644), but written atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


# --- begin -------------------------------------------------------------------------------------------
def _policy_oid(config: Config, active: x509.Certificate) -> str:
    """The new CA certificate and the links carry the active CA certificate's policy (as ``ca init`` did)."""
    try:
        policies = active.extensions.get_extension_for_class(x509.CertificatePolicies).value
        return str(policies[0].policy_identifier.dotted_string)
    except (x509.ExtensionNotFound, IndexError):
        return config.profile(None).policy_oid


def _validity_days(config: Config, active: x509.Certificate, curve: str, days: int | None) -> int:
    """Given: as asked (refused past the curve's end of life, as ``ca init`` refuses). Not given: the active
    CA certificate's validity, cut at the curve's end of life (A.62)."""
    if days is not None:
        if days < 1:
            raise ConfigError("the new CA certificate needs a validity of at least one day")
        return days
    inherited = (active.not_valid_after_utc - active.not_valid_before_utc).days
    return max(1, min(inherited, (config.secure_until[curve] - utcnow()).days))


def begin(
    config: Config,
    secret: CustodySecret,
    *,
    actor: str,
    curve: str | None = None,
    validity_days: int | None = None,
    request_out: Path | None = None,
) -> dict[str, Any]:
    """Generation n+1: key, CA certificate (or a request for the external root) and both links."""
    if config.ca_next is not None:
        raise ConfigError(
            f"generation {config.ca_next.generation} was begun already ([ca.next], key "
            f"{config.ca_next.key_label!r}): activate it before beginning another"
        )
    if _pending_path(config).exists():
        raise ConfigError(
            f"generation {config.ca_generation + 1} waits for its certificate from the external root "
            f"({_pending_path(config)}): ckms ca rollover import-cert FILE"
        )
    external = config.ca_chain is not None
    if external and request_out is None:
        raise ConfigError(
            "this CA's certificate is signed by an external root: give --request-out FILE for a request "
            "the root signs, then install its answer with 'ckms ca rollover import-cert FILE'"
        )
    if not external and request_out is not None:
        raise ConfigError("--request-out is for a CA under an external root; this CA certifies itself")
    active = load_ca_cert(config.ca_cert)
    active_key = active.public_key()
    if not isinstance(active_key, ec.EllipticCurvePublicKey):
        raise ConfigError("the active CA certificate does not hold an EC key")
    chosen = curve_by_name(curve or curve_of(active_key).name)
    generation, now = config.ca_generation + 1, utcnow()
    label = next_label(config.ca_key_label, generation)
    days = _validity_days(config, active, chosen.name, validity_days)
    policy = _policy_oid(config, active)
    probe = ec.generate_private_key(chosen.crypto_curve).public_key()  # refuse a bad validity before keygen
    ca_builder(
        subject=active.subject,
        public_key=probe,
        now=now,
        validity_days=days,
        policy_oid=policy,
        secure_until=config.secure_until,
    )
    _refuse_leftover_key(config, label)
    hsm_admin.generate_key(config, secret, label, chosen.name)  # SO session: the token checks the custodians
    with Token(config.token) as token:
        old_key, new_key = token.load_ec_key(config.ca_key_label), token.load_ec_key(label)
        if public_key_sha256(old_key.public_key()) != public_key_sha256(active_key):
            raise HsmError(f"the key {config.ca_key_label!r} in the token is not the active CA certificate's")
        if external:
            assert request_out is not None
            return _request(config, new_key, active, generation, request_out)
        builder = ca_builder(
            subject=active.subject,
            public_key=new_key.public_key(),
            now=now,
            validity_days=days,
            policy_oid=policy,
            secure_until=config.secure_until,
        )
        new_cert = asyncio.run(_sign(config, new_key, builder, "CA certificate"))
        return _install_next(config, old_key, new_key, active, new_cert, label, actor)


def _refuse_leftover_key(config: Config, label: str) -> None:
    """A key of the new label made before this begin (an interrupted one, or one made with the user PIN alone)
    is not used: the new generation's key is the one generated now, with two custodians present."""
    with Token(config.token) as token:
        try:
            token.load_ec_key(label)
        except HsmError:
            return
    raise HsmError(
        f"a key labelled {label!r} is already in the token (an interrupted begin?): destroy it with "
        f"'ckms hsm destroy-key --label {label}' and begin again"
    )


async def _sign(
    config: Config, key: HsmEcPrivateKey, builder: x509.CertificateBuilder, what: str
) -> x509.Certificate:
    async with open_signer(config, key) as signer:
        cert, _ = await signer.certificate(builder, what)
    return cert


def _request(
    config: Config, key: HsmEcPrivateKey, active: x509.Certificate, generation: int, out: Path
) -> dict[str, Any]:
    """The new key's request for the external root (as ``ca init --csr-out``), and a note of what waits."""

    async def sign() -> x509.CertificateSigningRequest:
        builder = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(active.subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        )
        async with open_signer(config, key) as signer:
            return await signer.request(builder)

    out.write_bytes(asyncio.run(sign()).public_bytes(_PEM))
    pending = _pending_path(config)
    pending.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pending.write_text(
        json.dumps({"generation": generation, "key_label": key.label, "request": str(out)}) + "\n"
    )
    return {
        "generation": generation,
        "key_label": key.label,
        "status": "pending-ca-certificate",
        "request": str(out),
        "next": "have the request signed by your root, then: ckms ca rollover import-cert FILE",
    }


def import_certificate(config: Config, cert_path: Path, *, actor: str) -> dict[str, Any]:
    """Finish ``begin`` for a CA under an external root: the root's certificate for the new key."""
    pending = _pending_path(config)
    if not pending.exists():
        raise ConfigError(
            "no rollover waits for a certificate: ckms ca rollover begin --request-out FILE first"
        )
    label = str(json.loads(pending.read_text())["key_label"])
    active, new_cert = load_ca_cert(config.ca_cert), load_ca_cert(cert_path)
    if new_cert.subject != active.subject:
        raise ConfigError(
            f"the certificate names {new_cert.subject.rfc4514_string()!r}, not this CA "
            f"({active.subject.rfc4514_string()!r})"
        )
    basic = new_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not basic.ca:
        raise ConfigError("the certificate is not a CA certificate (basicConstraints CA:FALSE)")
    assert config.ca_chain is not None  # begin wrote a request only for a CA under an external root
    parents = [
        c
        for c in x509.load_pem_x509_certificates(config.ca_chain.read_bytes())
        if c.subject == new_cert.issuer
    ]
    if not parents:
        raise ConfigError(
            f"the certificate's issuer {new_cert.issuer.rfc4514_string()!r} is not in {config.ca_chain}"
        )
    try:
        new_cert.verify_directly_issued_by(parents[0])
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(
            f"the certificate is not signed by its issuer in {config.ca_chain} ({exc})"
        ) from None
    with Token(config.token) as token:
        old_key, new_key = token.load_ec_key(config.ca_key_label), token.load_ec_key(label)
        if public_key_sha256(new_cert.public_key()) != public_key_sha256(new_key.public_key()):
            raise ConfigError(f"the certificate is not for the new key {label!r} in the token")
        result = _install_next(config, old_key, new_key, active, new_cert, label, actor)
    pending.unlink()
    return result


def _install_next(
    config: Config,
    old_key: HsmEcPrivateKey,
    new_key: HsmEcPrivateKey,
    active: x509.Certificate,
    new_cert: x509.Certificate,
    label: str,
    actor: str,
) -> dict[str, Any]:
    """Both link certificates, the files, the database rows, ``[ca.next]`` and the manifest."""
    now, policy = utcnow(), _policy_oid(config, active)

    async def links() -> tuple[x509.Certificate, x509.Certificate]:
        new_with_old = link_builder(subject=new_cert, issuer=active, now=now, policy_oid=policy)
        old_with_new = link_builder(subject=active, issuer=new_cert, now=now, policy_oid=policy)
        return (
            await _sign(config, old_key, new_with_old, "NewWithOld link certificate"),
            await _sign(config, new_key, old_with_new, "OldWithNew link certificate"),
        )

    new_with_old, old_with_new = asyncio.run(links())
    generation = config.ca_generation + 1
    directory = generation_dir(config.home, generation)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, links_path = directory / "ca.pem", directory / "links.pem"
    _write_public(cert_path, _pem(new_cert))
    _write_public(links_path, _pem(new_with_old, old_with_new))  # NewWithOld first, then OldWithNew
    _store(config, actor, [(new_cert, "ca"), (new_with_old, "ca-link"), (old_with_new, "ca-link")], label)
    staged = CaGeneration(generation, label, cert_path, links_path)
    changed = write_ca_tables(config.home, config.active_generation, staged, config.ca_retired)
    manifest = rerecord_manifest(changed, old_key, actor)
    return {
        "generation": generation,
        "key_label": label,
        "curve": new_key.curve_info.name,
        "ca_cert": str(cert_path),
        "links": str(links_path),
        "subject": new_cert.subject.rfc4514_string(),
        "subject_key_id": subject_key_id(new_cert),
        "not_after": new_cert.not_valid_after_utc.isoformat(),
        "selftest_manifest": str(manifest),
        "warnings": validity_problems(list(changed.profiles.values()), new_cert, now),
        "next": "give relying parties the new CA certificate and the links, then: ckms ca rollover activate; "
        + RESTART,
    }


def _store(config: Config, actor: str, made: list[tuple[x509.Certificate, str]], label: str) -> None:
    """Every certificate the CA makes is in ``certificates``; CA and link certificates as kind ``ca``. In the
    same transaction the new key gets the grants the active key has (``key:<label>`` rows of the ACL, E.05 d),
    so the access-control tables keep naming every key in the token (E.06)."""
    rows = [
        certificate_row(
            cert,
            cert.public_bytes(serialization.Encoding.DER),
            kind="ca",
            profile=profile,
            requested_by=actor,
            csr_sha256=None,
            pubkey_sha256=public_key_sha256(cert.public_key()),
        )
        for cert, profile in made
    ]
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:

        def store(conn: Connection) -> None:
            conn.execute(certificates.insert(), rows)
            grant_like(conn, config.ca_key_label, label)

        writer.run(store)
    finally:
        writer.close()


# --- activate ----------------------------------------------------------------------------------------
def activate(config: Config, *, actor: str) -> dict[str, Any]:
    """``[ca.next]`` becomes ``[ca]``; the active generation becomes a ``[[ca.retired]]`` entry."""
    staged = config.ca_next
    if staged is None:
        raise ConfigError("no rollover was begun ([ca.next] is absent): ckms ca rollover begin first")
    new_cert = load_ca_cert(staged.cert)
    if staged.links is None or not staged.links.exists():
        raise ConfigError(f"generation {staged.generation} has no link certificates; begin it again")
    if new_cert.not_valid_before_utc > utcnow():
        raise ConfigError(
            f"the new CA certificate is valid only from {new_cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    with Token(config.token) as token:
        new_key = token.load_ec_key(staged.key_label)
        if public_key_sha256(new_key.public_key()) != public_key_sha256(new_cert.public_key()):
            raise HsmError(f"the key {staged.key_label!r} in the token is not the new CA certificate's")
        retired = (*config.ca_retired, config.active_generation)
        changed = write_ca_tables(config.home, staged, None, retired, curve=new_key.curve_info.name)
        manifest = rerecord_manifest(changed, new_key, actor)
    check = integrity_test(changed, new_cert)
    if not check.ok:
        raise SelfTestFailed(f"after the rollover the integrity self-test fails: {check.detail}")
    return {
        "active_generation": staged.generation,
        "key_label": staged.key_label,
        "retired_generation": config.ca_generation,
        "retired_key_label": config.ca_key_label,
        "selftest_manifest": str(manifest),
        "warnings": validity_problems(list(changed.profiles.values()), new_cert, utcnow()),
        "next": RESTART,
    }
