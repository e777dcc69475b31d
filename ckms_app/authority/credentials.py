"""The certificates the CA issues to itself and its people outside EST: the daemon's TLS certificate
(``ckms ca init``, ``ckms ca renew-tls``) and the template of people's identity certificates (the
ceremony's demo identities, ``ckms entity enrol`` and EST identity enrolment).

Each is signed through the signer like every certificate, recorded with its audit event in one commit,
and its key written to a 0600 file."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.audit.record import Actor, event, named
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.signer import Signer, open_signer
from ckms_app.config import Config, load_config
from ckms_app.hsm.token import (
    Token,
    write_secret_file,
)
from ckms_app.store.chain import append_audit
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import certificates, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.profiles import end_entity_builder, new_serial

CEREMONY = named("ceremony", "administrator")  # who acts in ckms ca init


async def issue_certificate(
    config: Config,
    signer: Signer,
    ca_cert: x509.Certificate,
    writer: GroupCommitWriter,
    profile_name: str,
    cn: str,
    sans: tuple[x509.GeneralName, ...],
    subject_key: ec.EllipticCurvePrivateKey,
    *,
    kind: str,
    who: Actor = CEREMONY,
) -> x509.Certificate:
    profile = config.profile(profile_name)
    builder = end_entity_builder(
        profile=profile,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        sans=sans,
        public_key=subject_key.public_key(),
        issuer=ca_cert,
        serial=new_serial(),
        now=utcnow(),
        crl_url=config.server.crl_url("full", config.ca_generation),
        delta_crl_url=config.server.crl_url("delta", config.ca_generation),
    )
    cert, der = await signer.certificate(builder, f"{kind} certificate")
    row = certificate_row(
        cert,
        der,
        kind=kind,
        profile=profile_name,
        requested_by=who.entity_id,
        csr_sha256=None,
        pubkey_sha256=public_key_sha256(subject_key.public_key()),
    )
    audit = event(
        who, "certificate.issue", str(row["serial"]), "success", {"kind": kind, "subject": row["subject"]}
    )

    def store(c: Any) -> None:
        c.execute(certificates.insert(), row)
        append_audit(c, [audit])

    await writer.submit(store)
    return cert


def write_key_and_cert(
    key_path: Path, cert_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if key_path.exists():
        key_path.unlink()
    write_secret_file(key_path, pem.decode().strip())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def identity_builder(
    config: Config, ca_cert: x509.Certificate, entity_id: str, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """A person's client certificate for their own public key (from their CSR): subject CN = entity ID.

    Signed by the caller through its signer (guard, lint, HSM): the daemon's for EST identity
    enrolment, a command's own for ``ckms entity enrol`` and the ceremony's demo identities."""
    return end_entity_builder(
        profile=config.profile("identity"),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, entity_id)]),
        sans=(),
        public_key=public_key,
        issuer=ca_cert,
        serial=new_serial(),
        now=utcnow(),
        crl_url=config.server.crl_url("full", config.ca_generation),
        delta_crl_url=config.server.crl_url("delta", config.ca_generation),
    )


def renew_tls(home: Path) -> dict[str, Any]:
    """``ckms ca renew-tls``: a new key and certificate for the daemon's EST/API listener, signed through
    the signer like every certificate (refused in the error state or with the clock unsynchronised).
    The daemon presents it from its next start."""
    config = load_config(home)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    engine = open_engine(config.database_url)
    migrate(engine)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        with Token(config.token) as token:
            key = token.load_ec_key(config.ca_key_label)

            async def issue() -> x509.Certificate:
                async with open_signer(config, key, writer) as signer:
                    return await issue_tls_certificate(
                        config, signer, ca_cert, writer, named("ca-host", "system")
                    )

            cert = asyncio.run(issue())
    finally:
        writer.close()
        engine.dispose()
    return {
        "home": str(config.home),
        "status": "renewed",
        "tls_cert": str(config.server.tls_cert),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "next": "restart the daemon to present it (systemctl restart ckms-ca)",
    }


async def issue_tls_certificate(
    config: Config,
    signer: Signer,
    ca_cert: x509.Certificate,
    writer: GroupCommitWriter,
    who: Actor = CEREMONY,
) -> x509.Certificate:
    """A new key and certificate for the daemon's EST/API listener, written to the configured files."""
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = await issue_certificate(
        config,
        signer,
        ca_cert,
        writer,
        "tls-server",
        config.server.public_host,
        tls_names(config),
        tls_key,
        kind="tls-server",
        who=who,
    )
    write_key_and_cert(config.server.tls_key, config.server.tls_cert, tls_key, cert)
    return cert


def tls_names(config: Config) -> tuple[x509.GeneralName, ...]:
    """The daemon's TLS names: loopback for local clients and the name or address clients use."""
    sans = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        _host_name(config.server.public_host),
    ]
    return tuple(dict.fromkeys(sans))


def _host_name(host: str) -> x509.GeneralName:
    """The TLS server's own name: an IP address SAN for an address, a DNS SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
