"""Link certificates for a CA key rollover (groundwork for issue 14 part 3): the real linter passes them
and OpenSSL builds the paths they exist for.

Two generations of one CA (same name, two keys): NewWithOld lets a relying party that trusts only the old
CA certificate accept the new key's certificates, OldWithNew the reverse; with pathLen 0 on both CA
certificates, because a link between keys of one name is self-issued (RFC 5280 §4.2.1.9).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.authority.linter import AsyncLinter, find_linter_binary
from ckms_app.errors import ConfigError
from ckms_app.x509.key_ids import issuer_key_id, subject_key_id
from ckms_app.x509.profiles import ca_builder, link_builder, new_serial

NOW = dt.datetime.now(dt.UTC)
NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ckms test factory"),
        x509.NameAttribute(NameOID.COMMON_NAME, "ckms Private CA"),
    ]
)
POLICY = "1.3.6.1.4.1.99999.1.1"


def _ca(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    builder = ca_builder(
        subject=NAME, public_key=key.public_key(), now=NOW, validity_days=days, policy_oid=POLICY
    )
    return builder.sign(key, hashes.SHA256())


def _leaf(issuer_key: ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(path: Path, *certs: x509.Certificate) -> str:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def generations() -> dict[str, object]:
    old_key, new_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    old, new = _ca(old_key, 3650), _ca(new_key, 5000)
    new_with_old = link_builder(subject=new, issuer=old, now=NOW, policy_oid=POLICY).sign(
        old_key, hashes.SHA256()
    )
    old_with_new = link_builder(subject=old, issuer=new, now=NOW, policy_oid=POLICY).sign(
        new_key, hashes.SHA256()
    )
    return {
        "old_key": old_key,
        "new_key": new_key,
        "old": old,
        "new": new,
        "new_with_old": new_with_old,
        "old_with_new": old_with_new,
    }


def test_links_carry_the_keys_they_join(generations: dict) -> None:  # type: ignore[type-arg]
    nwo, own = generations["new_with_old"], generations["old_with_new"]
    old, new = generations["old"], generations["new"]
    assert subject_key_id(nwo) == subject_key_id(new) and issuer_key_id(nwo) == subject_key_id(old)
    assert subject_key_id(own) == subject_key_id(old) and issuer_key_id(own) == subject_key_id(new)
    assert nwo.subject == nwo.issuer == NAME  # self-issued: pathLen 0 of the CA still holds
    # a link never outlives the earlier of the two CA certificates
    assert nwo.not_valid_after_utc == own.not_valid_after_utc == old.not_valid_after_utc


def test_openssl_builds_the_paths_both_ways(generations: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    new_leaf, old_leaf = _leaf(generations["new_key"], "dev-new"), _leaf(generations["old_key"], "dev-old")
    old_only = _pem(tmp_path / "old.pem", generations["old"])
    new_only = _pem(tmp_path / "new.pem", generations["new"])
    nwo = _pem(tmp_path / "nwo.pem", generations["new_with_old"])
    own = _pem(tmp_path / "own.pem", generations["old_with_new"])
    new_leaf_pem, old_leaf_pem = _pem(tmp_path / "l1.pem", new_leaf), _pem(tmp_path / "l2.pem", old_leaf)
    # without the link, a relying party that trusts only the old certificate refuses the new key's leaf
    assert _verify("-CAfile", old_only, new_leaf_pem).returncode != 0
    done = _verify("-CAfile", old_only, "-untrusted", nwo, new_leaf_pem)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _verify("-CAfile", new_only, "-untrusted", own, old_leaf_pem)
    assert done.returncode == 0, done.stdout + done.stderr
    # a trust store with both generations (same name) picks the right one by key identifier
    both = _pem(tmp_path / "both.pem", generations["old"], generations["new"])
    assert _verify("-CAfile", both, new_leaf_pem).returncode == 0
    assert _verify("-CAfile", both, old_leaf_pem).returncode == 0


def test_the_linter_passes_both_links(generations: dict) -> None:  # type: ignore[type-arg]
    async def lint() -> list[tuple[str, bool, list[str]]]:
        linter = await AsyncLinter.start(find_linter_binary(None))
        try:
            out = []
            for name in ("new_with_old", "old_with_new"):
                report = await linter.lint_certificate(
                    generations[name].public_bytes(serialization.Encoding.DER)
                )
                out.append((name, report.ok, [f"{f.lint}: {f.details}" for f in report.blocking]))
            return out
        finally:
            await linter.close()

    for name, ok, blocking in asyncio.run(lint()):
        assert ok, f"{name}: {blocking}"


def test_a_link_joins_two_keys_of_one_ca(generations: dict) -> None:  # type: ignore[type-arg]
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (
        ca_builder(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")]),
            public_key=other_key.public_key(),
            now=NOW,
            validity_days=365,
            policy_oid=POLICY,
        )
    ).sign(other_key, hashes.SHA256())
    with pytest.raises(ConfigError, match="two keys of one CA"):
        link_builder(subject=other, issuer=generations["old"], now=NOW, policy_oid=POLICY)
    with pytest.raises(ConfigError, match="same one"):
        link_builder(subject=generations["old"], issuer=generations["old"], now=NOW, policy_oid=POLICY)
