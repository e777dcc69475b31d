"""Issuer key identifiers (CA key rollover groundwork): every certificate and CRL row names the CA key that
signed it, new rows from the issuing code and old rows from migration 5, by key and never by name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import inspect, select

from ckms_app.authority.issuance import certificate_row
from ckms_app.store import migrations
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import certificates, crls, schema_migrations, utcnow
from ckms_app.x509.key_ids import issuer_key_id, subject_key_id

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms test CA")])
NOW = dt.datetime.now(dt.UTC)


def _ca(key: ec.EllipticCurvePrivateKey, *, with_aki: bool = True) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)  # every generation of a rolled-over CA keeps the name
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if with_aki:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    return b.sign(key, hashes.SHA256())


def _leaf(ca_key: ec.EllipticCurvePrivateKey, cn: str, *, with_aki: bool = True) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
    )
    if with_aki:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    return b.sign(ca_key, hashes.SHA256())


def _ski(key: ec.EllipticCurvePrivateKey) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()


def test_issuer_key_id_tells_two_keys_of_one_name_apart() -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    old_leaf, new_leaf = _leaf(old, "dev-1"), _leaf(new, "dev-2")
    assert old_leaf.issuer == new_leaf.issuer  # the name cannot tell them apart
    assert issuer_key_id(old_leaf) == _ski(old) != issuer_key_id(new_leaf) == _ski(new)
    assert subject_key_id(_ca(old)) == _ski(old) == issuer_key_id(_ca(old))
    # a self-signed CA without an AKI is its own issuer; a leaf without one names no issuer key
    assert issuer_key_id(_ca(old, with_aki=False)) == _ski(old)
    with pytest.raises(ValueError, match="no authority key identifier"):
        issuer_key_id(_leaf(old, "dev-3", with_aki=False))


def _row(cert: x509.Certificate, kind: str = "end-entity") -> dict[str, object]:
    der = cert.public_bytes(serialization.Encoding.DER)
    return certificate_row(
        cert, der, kind=kind, profile=kind, requested_by="test", csr_sha256=None, pubkey_sha256="0" * 64
    )


def _v4_database(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database as version 4 left it: no issuer_key_id columns, no index."""
    engine = open_engine(url)
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:4])
        assert migrate(engine) == 4
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_certificates_issuer_not_after")
        conn.exec_driver_sql("ALTER TABLE certificates DROP COLUMN issuer_key_id")
        conn.exec_driver_sql("ALTER TABLE crls DROP COLUMN issuer_key_id")
    engine.dispose()


def _insert_v4(url: str, rows: list[dict[str, object]], with_crl: bool) -> None:
    engine = open_engine(url)
    with engine.begin() as conn:
        for row in rows:
            conn.execute(certificates.insert().values({k: v for k, v in row.items() if k != "issuer_key_id"}))
        if with_crl:
            now = utcnow()
            conn.execute(
                crls.insert().values(
                    crl_number=1,
                    kind="full",
                    base_crl_number=None,
                    this_update=now,
                    next_update=now + dt.timedelta(hours=1),
                    max_revocation_id=0,
                    der=b"\x30\x00",
                )
            )
    engine.dispose()


def _key_ids(url: str) -> tuple[dict[str, str | None], list[str | None]]:
    engine = open_engine(url)
    with engine.connect() as conn:
        certs = {r.subject: r.issuer_key_id for r in conn.execute(select(certificates))}
        crl_ids = [r.issuer_key_id for r in conn.execute(select(crls))]
        assert "ix_certificates_issuer_not_after" in {
            i["name"] for i in inspect(conn).get_indexes("certificates")
        }
        assert max(r.version for r in conn.execute(select(schema_migrations))) == 5
    engine.dispose()
    return certs, crl_ids


def test_migration_5_backfills_a_single_key_ca_in_one_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'v4.sqlite3'}"
    _v4_database(url, monkeypatch)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    rows = [_row(_ca(ca_key), kind="ca"), _row(_leaf(ca_key, "dev-1")), _row(_leaf(ca_key, "dev-2"))]
    _insert_v4(url, rows, with_crl=True)
    engine = open_engine(url)
    assert migrate(engine) == 5
    assert migrate(engine) == 5  # idempotent: nothing to add the second time
    engine.dispose()
    certs, crl_ids = _key_ids(url)
    assert certs == {"CN=ckms test CA": _ski(ca_key), "CN=dev-1": _ski(ca_key), "CN=dev-2": _ski(ca_key)}
    assert crl_ids == [_ski(ca_key)]


def test_migration_5_parses_each_row_without_a_single_ca_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``ca`` row (an interrupted ceremony, a partial restore): each certificate's own AKI decides,
    and a CRL of an unknown key stays unattributed rather than guessed."""
    url = f"sqlite:///{tmp_path / 'v4.sqlite3'}"
    _v4_database(url, monkeypatch)
    one, two = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    _insert_v4(url, [_row(_leaf(one, "dev-1")), _row(_leaf(two, "dev-2"))], with_crl=True)
    engine = open_engine(url)
    assert migrate(engine) == 5
    engine.dispose()
    certs, crl_ids = _key_ids(url)
    assert certs == {"CN=dev-1": _ski(one), "CN=dev-2": _ski(two)}
    assert crl_ids == [None]


def test_new_rows_carry_their_issuer_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    engine = open_engine(url)
    assert migrate(engine) == 5
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf(ca_key, "dev-1")
    row = _row(leaf)
    assert row["issuer_key_id"] == _ski(ca_key)
    # the issuing path passes the key id it already knows; the row takes it as given
    fast = certificate_row(
        leaf,
        leaf.public_bytes(serialization.Encoding.DER),
        kind="end-entity",
        profile="end-entity",
        requested_by="test",
        csr_sha256=None,
        pubkey_sha256="0" * 64,
        issuer=_ski(ca_key),
    )
    assert fast == {**row, "issued_at": fast["issued_at"]}
    with engine.begin() as conn:
        conn.execute(certificates.insert().values(row))
    with engine.connect() as conn:
        assert conn.execute(select(certificates.c.issuer_key_id)).scalar_one() == _ski(ca_key)
    engine.dispose()
