"""The CA certificates relying parties trust, over every generation of the CA's key (docs/ca-key-rollover.md).

After a rollover the CA has several certificates of one name: the active key's, the next key's (between
``begin`` and ``activate``) and the retired keys' (they still sign CRLs). Whoever checks a certificate the
CA issued, or the daemon's own TLS certificate, must trust each of them; ``/cacerts`` hands out the same
set with the link certificates and the external chain.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.config import CaGeneration, Config
from ckms_app.errors import ConfigError


def load_certificate(path: Path, what: str = "CA certificate") -> x509.Certificate:
    """One PEM certificate of the CA home; a missing or malformed file is a ConfigError naming it."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"the {what} {path} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"the {what} {path} is not a PEM certificate: {exc}") from None


def generation_certificates(config: Config) -> list[x509.Certificate]:
    """The CA certificate of every generation, the active one first: trust anchors for mutual TLS. Never
    the external chain: a certificate its root issued to someone else must not open a session here."""
    return [load_certificate(g.cert) for g in config.generations()]


def trusted_certificates(config: Config) -> list[x509.Certificate]:
    """What ``/cacerts`` serves: every generation's CA certificate (active first), their link certificates,
    then the external chain."""
    certs = generation_certificates(config)
    for generation in config.generations():
        if generation.links is not None:
            certs += x509.load_pem_x509_certificates(generation.links.read_bytes())
    if config.ca_chain is not None and config.ca_chain.exists():
        certs += x509.load_pem_x509_certificates(config.ca_chain.read_bytes())
    return certs


def pem_bundle(certs: list[x509.Certificate]) -> str:
    """Certificates as one PEM text (for ``ssl.SSLContext.load_verify_locations(cadata=...)``)."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def trust_summary(config: Config) -> dict[str, object]:
    """What deployment tooling hands to relying parties (``ckms ca trust --json``): the PEM bundle of every
    generation's CA certificate, and the full-CRL address of each key that signs CRLs (the terminal's CRL
    relay carries one CRL per key to the IoT hub)."""
    return {
        "bundle": pem_bundle(generation_certificates(config)),
        "crl_urls": [config.server.crl_url("full", g.generation) for g in config.signing_generations()],
        "generations": [
            {
                "generation": g.generation,
                "role": role,
                "key_label": g.key_label,
                "cert": str(g.cert),
            }
            for g, role in _roles(config)
        ],
    }


def _roles(config: Config) -> list[tuple[CaGeneration, str]]:
    roles = [(config.active_generation, "active")]
    roles += [(g, "retired") for g in config.signing_generations()[1:]]
    if config.ca_next is not None:
        roles.append((config.ca_next, "next"))
    return roles
