"""``ckms ca init`` and ``ckms ca import-cert``: set up a complete CA home from nothing.

The home holds the token (SoftHSM by default), the configuration, the CA certificate, the
daemon's TLS identity, the database, the published CRLs, and the people the ceremony registers: with
``--demo`` one demo client identity per role (key and password in the home: a lab only), with
``--person ID:ROLE`` people who enrol later with their own keys and a one-time code.
PINs are generated, written to 0600 files under ``secrets/`` and never printed or logged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.algorithms import curve_by_name
from ckms_app.audit.record import event
from ckms_app.audit.seals import ensure_audit_key, seal_and_log
from ckms_app.authority.ceremony_people import InitPeople, check_persons, register_persons
from ckms_app.authority.clock import ClockGate
from ckms_app.authority.clock import default_source as default_clock_source
from ckms_app.authority.credentials import (
    CEREMONY,
    issue_certificate,
    issue_tls_certificate,
    write_key_and_cert,
)
from ckms_app.authority.crl_publisher import CrlIssuer, CrlPublisher
from ckms_app.authority.expiry_watch import crypto_period_warnings
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.linter import find_linter_binary
from ckms_app.authority.passwords import hash_password
from ckms_app.authority.rbac import ROLES, certificate_fingerprint
from ckms_app.authority.selftest import record_manifest
from ckms_app.authority.signer import open_signer
from ckms_app.config import CONFIG_NAME, Config, load_config, read_raw_config
from ckms_app.errors import ConfigError
from ckms_app.hsm.softhsm import provision_softhsm_token
from ckms_app.hsm.token import DEFAULT_SOFTHSM_MODULE, HsmEcPrivateKey, Token, write_secret_file
from ckms_app.store.chain import append_audit
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import certificates, entities, entity_roles, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.profiles import ca_builder

DEVICE_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


@dataclass(frozen=True)
class InitOptions:
    curve: str = "P-256"
    ca_name: str = "ckms Private CA"
    ca_validity_days: int = 3650
    module: str = DEFAULT_SOFTHSM_MODULE
    token_label: str = "ckms-ca"
    pin_file: Path | None = None  # for an existing (vendor) token; SoftHSM PINs are generated
    listen: str = "127.0.0.1"
    public_host: str = "127.0.0.1"
    est_port: int = 8443
    crl_port: int = 8080
    csr_out: Path | None = None
    lint: bool = True
    policy_oid: str | None = None
    # None: "chrony" if chronyc is installed, else "none" (stated in the summary)
    clock_source: str | None = None
    database_url: str | None = None  # default: SQLite in the home; postgresql+psycopg://… for several nodes
    people: InitPeople = field(default_factory=InitPeople)  # --demo, --person ID:ROLE


#: Validity defaults per profile (issue 14 part 7): a device keeps its certificate for the product's
#: life (10 years), a person's or the daemon's TLS certificate is renewed yearly. No default may
#: outlive the CA: each is capped at half the CA's validity, so a profile keeps fitting for the second
#: half of the CA's life, the time left to roll the CA key over (requests that would not fit are refused).
DEVICE_VALIDITY_DAYS = 3650
PERSON_VALIDITY_DAYS = 365


def fitting_validity(days: int, ca_validity_days: int) -> int:
    """``days``, or half the CA's validity when that is shorter (at least one day)."""
    return max(1, min(days, ca_validity_days // 2))


def default_config(home: Path, opts: InitOptions, pin_file: str, softhsm_conf: str | None) -> dict[str, Any]:
    # Your organisation's policy OID belongs here (A.05). Without one, use the X.660 "example" arc
    # with random arcs: unique enough for a lab, small enough for every ASN.1 parser (a 2.25 UUID
    # OID has a 128-bit arc that Go and many embedded TLS stacks cannot parse).
    policy_oid = opts.policy_oid or f"2.999.{secrets.randbits(31)}.{secrets.randbits(31)}.1"
    hsm: dict[str, Any] = {"module": opts.module, "token_label": opts.token_label, "pin_file": pin_file}
    if softhsm_conf:
        hsm["softhsm_conf"] = softhsm_conf
    return {
        "ca": {"name": opts.ca_name, "curve": opts.curve, "key_label": "ckms-ca-key", "cert": "ca/ca.pem"},
        "hsm": hsm,
        "server": {
            "listen": opts.listen,
            "public_host": opts.public_host,
            "est_port": opts.est_port,
            "crl_port": opts.crl_port,
            "tls_cert": "tls/server.pem",
            "tls_key": "tls/server.key",
            "shutdown_grace_seconds": 10.0,
            "workers": 0,
        },
        "database": {"url": opts.database_url or "sqlite:///db/ckms.sqlite3"},
        "crl": {
            "validity_hours": 24,
            "delta_validity_hours": 1,
            "full_interval_seconds": 3600,
            "max_publish_delay_seconds": 60,
            "directory": "crl",
        },
        "csr": {"max_bytes": 4096, "duplicate_csr": "return-existing"},
        "lint": {"enabled": opts.lint},
        "clock": {"source": opts.clock_source or default_clock_source(), "max_offset_seconds": 10},
        "issuance": {"default_profile": "device"},
        "profiles": {
            "device": {
                "validity_days": fitting_validity(DEVICE_VALIDITY_DAYS, opts.ca_validity_days),
                "key_usage": ["digital_signature"],
                "extended_key_usage": ["client_auth"],
                "policy_oid": policy_oid,
                "subject_cn_pattern": DEVICE_ID,
                "allowed_subject_attributes": ["CN", "O", "OU", "serialNumber"],
                "san_required": False,
                "san_uri_pattern": r"urn:ckms:device:[A-Za-z0-9._-]{1,64}",
                "san_dns_pattern": r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
                "allowed_curves": ["P-256", "P-384"],
            },
            "identity": {
                "validity_days": fitting_validity(PERSON_VALIDITY_DAYS, opts.ca_validity_days),
                "key_usage": ["digital_signature"],
                "extended_key_usage": ["client_auth"],
                "policy_oid": policy_oid,
                "subject_cn_pattern": DEVICE_ID,
                "allowed_subject_attributes": ["CN", "O", "OU"],
                "allowed_curves": ["P-256", "P-384"],
            },
            "tls-server": {
                "validity_days": fitting_validity(PERSON_VALIDITY_DAYS, opts.ca_validity_days),
                "key_usage": ["digital_signature"],
                "extended_key_usage": ["server_auth"],
                "policy_oid": policy_oid,
                "subject_cn_pattern": ".{1,64}",
                "allowed_subject_attributes": ["CN", "O"],
                "allowed_curves": ["P-256", "P-384"],
            },
        },
    }


def init_ca(home: Path, opts: InitOptions) -> dict[str, Any]:
    if (home / CONFIG_NAME).exists():
        raise ConfigError(f"{home} already holds a CA ({CONFIG_NAME} exists); choose an empty directory")
    curve = curve_by_name(opts.curve)
    check_persons(opts.people.persons)
    if opts.lint:
        find_linter_binary()  # fail before touching anything if the linter is missing
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    for sub in ("ca", "tls", "credentials", "crl", "db", "secrets"):
        (home / sub).mkdir(mode=0o700, exist_ok=True)

    if opts.pin_file is None:
        if opts.module != DEFAULT_SOFTHSM_MODULE and "softhsm" not in opts.module:
            raise ConfigError("a vendor PKCS#11 module needs --pin-file with the token's user PIN")
        pin_file = home / "secrets" / "token-pin"
        user_pin, so_pin = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        write_secret_file(pin_file, user_pin)
        # The SO PIN is kept for the HSM custodians; CA daemon part 2 splits it 2-of-3.
        write_secret_file(home / "secrets" / "token-so-pin", so_pin)
        provision_softhsm_token(
            opts.module,
            home / "hsm" / "softhsm2.conf",
            home / "hsm" / "tokens",
            opts.token_label,
            so_pin,
            user_pin,
        )
        config_pin, softhsm_conf = "secrets/token-pin", "hsm/softhsm2.conf"
    else:
        config_pin, softhsm_conf = str(opts.pin_file.resolve()), None

    (config_path := home / CONFIG_NAME).write_text(
        tomli_w.dumps(default_config(home, opts, config_pin, softhsm_conf))
    )
    try:  # fail before the key is generated if the clock is not synchronised (the signer checks again, A.33)
        ClockGate((config := load_config(home)).clock).require_sync()
    except BaseException:  # nothing exists yet: no ckms.toml that makes the home look initialised
        config_path.unlink(missing_ok=True)
        raise
    with Token(config.token) as token:
        key = token.generate_ec_key(config.ca_key_label, curve)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, opts.ca_name)])
        if opts.csr_out is not None:
            request = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(subject)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            )
            csr = asyncio.run(_sign_request(config, key, request))
            opts.csr_out.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
            return {
                "home": str(home),
                "status": "pending-ca-certificate",
                "csr": str(opts.csr_out),
                "next": f"have the CSR signed by your root, then: ckms ca import-cert --home {home} --cert FILE",
            }
        profile = config.profile("device")
        builder = ca_builder(
            subject=subject,
            public_key=key.public_key(),
            now=utcnow(),
            validity_days=opts.ca_validity_days,
            policy_oid=profile.policy_oid,
            secure_until=config.secure_until,
        )
        ca_cert = asyncio.run(_sign_ca_certificate(config, key, builder))
        config.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        return _finish(config, token, key, ca_cert, opts.people)


def import_ca_certificate(
    home: Path, cert_path: Path, chain_path: Path | None, people: InitPeople | None = None
) -> dict[str, Any]:
    people = people or InitPeople()
    check_persons(people.persons)
    config = load_config(home)
    if config.ca_cert.exists():
        raise ConfigError(f"{config.ca_cert} already exists; this CA is already complete")
    try:
        ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{cert_path} is not a PEM certificate: {exc}") from None
    with Token(config.token) as token:
        key = token.load_ec_key(config.ca_key_label)
        if public_key_sha256(ca_cert.public_key()) != public_key_sha256(key.public_key()):
            raise ConfigError("the certificate is not for this CA's key in the token")
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise ConfigError("the certificate is not a CA certificate (basicConstraints CA:FALSE)")
        config.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        if chain_path is not None:
            chain_target = config.home / "ca" / "chain.pem"
            chain_target.write_bytes(chain_path.read_bytes())
            raw = read_raw_config(config.home)
            raw["ca"]["chain"] = "ca/chain.pem"
            (config.home / CONFIG_NAME).write_text(tomli_w.dumps(raw))
            config = load_config(config.home)
        return _finish(config, token, key, ca_cert, people)


async def _sign_request(
    config: Config, key: HsmEcPrivateKey, builder: x509.CertificateSigningRequestBuilder
) -> x509.CertificateSigningRequest:
    async with open_signer(config, key) as signer:
        return await signer.request(builder)


async def _sign_ca_certificate(
    config: Config, key: HsmEcPrivateKey, builder: x509.CertificateBuilder
) -> x509.Certificate:
    async with open_signer(config, key) as signer:
        cert, _ = await signer.certificate(builder, "CA certificate")
    return cert


def _finish(
    config: Config, token: Token, key: Any, ca_cert: x509.Certificate, people: InitPeople
) -> dict[str, Any]:
    """With the CA certificate in place: database, TLS identity, people, first CRL."""
    engine = open_engine(config.database_url)
    migrate(engine)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        credentials = asyncio.run(_issue_identities(config, key, ca_cert, writer, engine, people.demo))
        codes = register_persons(writer, people.persons)
        _seal_initial_trail(config, token, key, writer)
    finally:
        writer.close()
        engine.dispose()

    manifest = record_manifest(config, key, recorded_by="ceremony")
    warnings = crypto_period_warnings(config, ca_cert, utcnow())
    for warning in warnings:  # loudly: the summary may go to a file, a refused request would come later
        print(f"WARNING: {warning}", file=sys.stderr)
    return {
        "home": str(config.home),
        "status": "ready",
        "clock_source": config.clock.source,
        "selftest_manifest": str(manifest),
        "ca_cert": str(config.ca_cert),
        "curve": key.curve_info.name,
        "token_label": config.token.token_label,
        "est_url": config.server.est_url,
        "crl_url": config.server.crl_url("full"),
        "delta_crl_url": config.server.crl_url("delta"),
        "credentials": credentials,
        "enrolment_codes": codes,
        "warnings": warnings,
    }


async def _issue_identities(
    config: Config, key: Any, ca_cert: x509.Certificate, writer: GroupCommitWriter, engine: Any, demo: bool
) -> dict[str, dict[str, str]]:
    async with open_signer(config, key, writer) as signer:
        ca_der = ca_cert.public_bytes(serialization.Encoding.DER)
        ca_row = certificate_row(
            ca_cert,
            ca_der,
            kind="ca",
            profile="ca",
            requested_by="ceremony",
            csr_sha256=None,
            pubkey_sha256=public_key_sha256(ca_cert.public_key()),
        )
        await writer.submit(
            lambda c: c.execute(
                certificates.insert().prefix_with("OR IGNORE")
                if engine.dialect.name == "sqlite"
                else certificates.insert(),
                ca_row,
            )
        )

        await issue_tls_certificate(config, signer, ca_cert, writer)

        credentials: dict[str, dict[str, str]] = {}
        # Demo identities only on request (--demo): their keys and passwords sit in the CA home, which
        # suits a lab and nothing else. Real people enrol with their own keys (--person, enrolment codes).
        for role in ROLES if demo else ():
            entity_id = f"demo-{role}"
            client_key = ec.generate_private_key(ec.SECP256R1())
            cert = await issue_certificate(
                config, signer, ca_cert, writer, "identity", entity_id, (), client_key, kind="identity"
            )
            key_path = config.home / "credentials" / f"{role}.key"
            cert_path = config.home / "credentials" / f"{role}.pem"
            write_key_and_cert(key_path, cert_path, client_key, cert)
            der = cert.public_bytes(serialization.Encoding.DER)
            # Each demo individual gets a generated password for admin CLI actions, in a 0600 file
            # next to its key (a real entity sets its own: ckms entity add / passwd, at a prompt).
            password = secrets.token_urlsafe(18)
            password_path = config.home / "credentials" / f"{role}.password"
            if password_path.exists():
                password_path.unlink()
            write_secret_file(password_path, password)
            entity = {
                "entity_id": entity_id,
                "role": role,
                "cert_sha256": certificate_fingerprint(der),
                "cert_serial": format(cert.serial_number, "x"),
                "status": "active",
                "created_at": utcnow(),
                "password_hash": hash_password(password),
            }
            audit = event(CEREMONY, "entity.create", entity_id, "success", {"roles": [role], "demo": True})

            def store(c: Any, entity: dict[str, Any] = entity, audit: dict[str, Any] = audit) -> None:
                c.execute(entities.insert(), entity)
                c.execute(
                    entity_roles.insert().values(
                        entity_id=entity["entity_id"],
                        role=entity["role"],
                        granted_at=entity["created_at"],
                        granted_by="ceremony",
                    )
                )
                append_audit(c, [audit])

            await writer.submit(store)
            credentials[role] = {
                "cert": str(cert_path),
                "key": str(key_path),
                "entity_id": entity_id,
                "password_file": str(password_path),
            }

        publisher = CrlPublisher(config, CrlIssuer.single(config, signer, ca_cert), writer, engine)
        await publisher.publish()
        return credentials


def _seal_initial_trail(config: Config, token: Token, key: Any, writer: GroupCommitWriter) -> None:
    """Generate the audit sealing key in the token and seal the ceremony's records with it."""

    audit_key = ensure_audit_key(token, config.home, key.curve_info, config.audit.key_label)
    seal_and_log(writer, audit_key, config.audit, force=True)
