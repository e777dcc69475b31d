"""Key identifiers: which CA key issued a certificate or a CRL.

Why not names: after a CA key rollover the new CA certificate keeps the old subject DN (so the link
certificates stay self-issued and pathLen 0 still holds), and both keys sign for a while — the new one
certificates, the old one its CRLs. Only the key identifier (the CA certificate's subjectKeyIdentifier,
which its certificates and CRLs carry as authorityKeyIdentifier) tells them apart. ckms stores it as
lower-case hex in ``certificates.issuer_key_id`` and ``crls.issuer_key_id``.
"""

from __future__ import annotations

from cryptography import x509


def subject_key_id(cert: x509.Certificate) -> str:
    """The certificate's own key identifier (its SKI extension; computed from the key if it has none)."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    return ski.digest.hex()


def issuer_key_id(cert: x509.Certificate) -> str:
    """The key identifier of the key that signed ``cert``: its AKI's keyIdentifier; for a self-signed
    certificate without one, its own SKI."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = None
    if aki is not None and aki.key_identifier is not None:
        return aki.key_identifier.hex()
    if cert.issuer == cert.subject:
        return subject_key_id(cert)
    raise ValueError(f"certificate {cert.serial_number:x} names no authority key identifier")
