"""Unit tests for the pieces of the issuance path: CSR policy, profiles, EST encodings, revocation input."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ckms_app.authority.revocation import parse_reason, parse_serial
from ckms_app.config import Profile
from ckms_app.errors import BadRequest, ConfigError, CsrRejected
from ckms_app.x509.assembly import assemble, signature_algorithm_der
from ckms_app.x509.csr_policy import check_csr
from ckms_app.x509.est_encoding import csr_attributes
from ckms_app.x509.profiles import end_entity_builder, key_usage, new_serial

PROFILE = Profile(
    name="device",
    validity_days=365,
    key_usage=("digital_signature",),
    extended_key_usage=("client_auth",),
    policy_oid="2.999.1.2.3",
    subject_cn_pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    allowed_subject_attributes=("CN", "O", "OU", "serialNumber"),
    san_required=False,
    san_dns_pattern=r"[a-z0-9.-]+",
    san_uri_pattern=r"urn:ckms:device:[A-Za-z0-9._-]{1,64}",
    allowed_curves=("P-256", "P-384"),
)


def csr(cn: str = "dev-1", key=None, sans=None, attrs=()) -> bytes:  # type: ignore[no-untyped-def]
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *attrs])
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def test_good_csr_passes_with_sans_and_hashes() -> None:
    der = csr(sans=[x509.UniformResourceIdentifier("urn:ckms:device:dev-1"), x509.DNSName("dev-1.factory")])
    checked = check_csr(der, PROFILE, 4096)
    assert checked.common_name == "dev-1" and len(checked.sans) == 2
    assert checked.curve.name == "P-256" and len(checked.csr_sha256) == 64


@pytest.mark.parametrize(
    ("der", "code"),
    [
        (b"", "csr_empty"),
        (b"\x30\x03\x02\x01\x01", "csr_malformed"),
        (csr(key=ed25519.Ed25519PrivateKey.generate()), "csr_key_type"),
        (csr(key=ec.generate_private_key(ec.SECP521R1())), "csr_key_type"),
        (csr(cn="no spaces allowed"), "csr_subject_policy"),
        (csr(cn="-starts-with-dash"), "csr_subject_policy"),
        (csr(attrs=(x509.NameAttribute(NameOID.COMMON_NAME, "second-cn"),)), "csr_subject_policy"),
        (csr(attrs=(x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.c"),)), "csr_subject_policy"),
        (csr(sans=[x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1"))]), "csr_san_policy"),
        (csr(sans=[x509.UniformResourceIdentifier("https://evil.example/")]), "csr_san_policy"),
    ],
)
def test_policy_violations_have_codes_and_sentences(der: bytes, code: str) -> None:
    with pytest.raises(CsrRejected) as info:
        check_csr(der, PROFILE, 4096)
    assert info.value.code == code and len(str(info.value)) > 15


def test_size_limit_and_bad_signature() -> None:
    with pytest.raises(CsrRejected, match="limit is 100"):
        check_csr(csr(), PROFILE, 100)
    tampered = bytearray(csr())
    tampered[-3] ^= 0xFF
    with pytest.raises(CsrRejected) as info:
        check_csr(bytes(tampered), PROFILE, 4096)
    assert info.value.code in ("csr_bad_signature", "csr_malformed")


def test_san_required_profile() -> None:
    strict = Profile(**{**PROFILE.__dict__, "san_required": True})
    with pytest.raises(CsrRejected, match="requires a subjectAltName"):
        check_csr(csr(), strict, 4096)


def test_profile_validation() -> None:
    with pytest.raises(ConfigError, match="not an OID"):
        Profile(**{**PROFILE.__dict__, "policy_oid": "hello"})
    with pytest.raises(ConfigError, match="unsupported curves"):
        Profile(**{**PROFILE.__dict__, "allowed_curves": ("P-521",)})
    with pytest.raises(ConfigError, match="unknown key_usage"):
        key_usage(("sign_everything",))


def test_serials_are_positive_random_and_at_most_20_octets() -> None:
    serials = {new_serial() for _ in range(10_000)}
    assert len(serials) == 10_000
    assert all(0 < s < 2**159 and s.bit_length() >= 64 for s in serials)


def test_validity_past_the_issuer_is_refused_not_cut() -> None:
    """Issue 14 part 4: a certificate that would outlive its CA is refused (400, audited by the caller)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CsrRejected, match=r"beyond the CA certificate's expiry") as refused:
        end_entity_builder(
            profile=PROFILE,
            subject=issuer.subject,
            sans=(),
            public_key=key.public_key(),
            issuer=issuer,
            serial=new_serial(),
            now=now,
            crl_url="http://c/full.crl",
            delta_crl_url="http://c/delta.crl",
        )
    assert refused.value.code == "validity_beyond_ca"


def test_csrattrs_is_valid_der_naming_algorithms() -> None:
    der = csr_attributes("sha384", ("P-256", "P-384"))
    out = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER"], input=der, capture_output=True, check=True
    )
    text = out.stdout.decode()
    assert "ecdsa-with-SHA384" in text and "id-ecPublicKey" in text
    assert "prime256v1" in text and "secp384r1" in text


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("keyCompromise", "keyCompromise"),
        ("KEYCOMPROMISE", "keyCompromise"),
        ("1", "keyCompromise"),
        (4, "superseded"),
        ("0", "unspecified"),
    ],
)
def test_reason_parsing(given: str | int, expected: str) -> None:
    assert parse_reason(given) == expected


@pytest.mark.parametrize("bad", ["certificateHold", "6", "8", "removeFromCRL", "because"])
def test_reasons_that_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_reason(bad)


def test_serial_parsing() -> None:
    assert parse_serial("00:AB:cd") == "abcd"
    assert parse_serial("0x0001") == "1"
    for bad in ["", "xyz", "1" * 41, "12 34"]:
        with pytest.raises(BadRequest):
            parse_serial(bad)


def test_assembled_certificate_carries_the_linted_tbs_and_verifies() -> None:
    """The issued certificate = linted TBS + CA signature; the DER parses and verifies under the CA key."""
    for curve, hash_algorithm in ((ec.SECP256R1(), hashes.SHA256()), (ec.SECP384R1(), hashes.SHA384())):
        ca_key, throwaway, subject_key = (ec.generate_private_key(curve) for _ in range(3))
        now = dt.datetime.now(dt.UTC)
        # A long SAN pushes the TBS over 255 bytes of content: exercises long-form DER lengths.
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("d" * 60 + f".n{i}.example") for i in range(8)]),
                critical=False,
            )
        )
        precert = builder.sign(throwaway, hash_algorithm)
        precert_der = precert.public_bytes(serialization.Encoding.DER)
        tbs = precert.tbs_certificate_bytes
        der = assemble(tbs, signature_algorithm_der(precert_der), ca_key.sign(tbs, ec.ECDSA(hash_algorithm)))
        cert = x509.load_der_x509_certificate(der)
        assert cert.tbs_certificate_bytes == precert.tbs_certificate_bytes
        assert cert.signature_algorithm_oid == precert.signature_algorithm_oid
        assert cert.public_bytes(serialization.Encoding.DER) == der
        ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
        # Re-assembling the throwaway-signed copy from its parts gives back its exact DER.
        assert (
            assemble(precert.tbs_certificate_bytes, signature_algorithm_der(precert_der), precert.signature)
            == precert_der
        )
        # CRLs have the same outer shape: the linted TBSCertList signed by the CA verifies as a CRL.
        crl_copy = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .last_update(now)
            .next_update(now + dt.timedelta(hours=1))
            .add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(7).revocation_date(now).build()
            )
            .sign(throwaway, hash_algorithm)
        )
        crl_der = assemble(
            crl_copy.tbs_certlist_bytes,
            signature_algorithm_der(crl_copy.public_bytes(serialization.Encoding.DER)),
            ca_key.sign(crl_copy.tbs_certlist_bytes, ec.ECDSA(hash_algorithm)),
        )
        crl = x509.load_der_x509_crl(crl_der)
        assert crl.tbs_certlist_bytes == crl_copy.tbs_certlist_bytes
        assert crl.is_signature_valid(ca_key.public_key())
