"""CRLs at factory scale and RFC 5280 expiry handling (issue 14 part 6).

A real ``ckms ca init`` home (SoftHSM, SQLite, the real linter) and the real publisher and signer in
process: many entries are listed, signed by the CA key and verifiable, every reason kept; the entry of
an expired certificate stays on exactly one CRL issued after its notAfter and is then removed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509

from ckms_app.authority.crl_publisher import CrlIssuer, CrlPublisher
from ckms_app.authority.signer import open_signer
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
from ckms_app.store.engine import open_engine
from ckms_app.store.writer import GroupCommitWriter

from .conftest import CaHome, init_home


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(tmp_path_factory.mktemp("crl") / "home", "--clock-source", "none", demo=False)


def _db(ca: CaHome) -> sqlite3.Connection:
    return sqlite3.connect(ca.home / "db" / "ckms.sqlite3")


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _revoked_certificate(
    ca: CaHome, serial: str, not_after: dt.datetime, reason: str = "keyCompromise"
) -> None:
    """A stored certificate row (shaped like the TLS certificate's) and its revocation."""
    with _db(ca) as db:
        db.row_factory = sqlite3.Row
        template = dict(db.execute("SELECT * FROM certificates WHERE kind='tls-server' LIMIT 1").fetchone())
        template |= {
            "serial": serial,
            "kind": "end-entity",
            "profile": "device",
            "status": "revoked",
            "not_after": _stamp(not_after),
            "pubkey_sha256": serial.rjust(64, "0"),
            "csr_sha256": None,
        }
        db.execute(
            f"INSERT INTO certificates ({','.join(template)}) VALUES ({','.join('?' * len(template))})",
            list(template.values()),
        )
        db.execute(
            "INSERT INTO revocations (serial, reason, revoked_at, revoked_by) VALUES (?, ?, ?, 'test')",
            (serial, reason, _stamp(dt.datetime.now(dt.UTC))),
        )


async def _publish(ca: CaHome, times: int = 1) -> list[x509.CertificateRevocationList]:
    config = load_config(ca.home)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    reader = open_engine(config.database_url)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    out = []
    try:
        with Token(config.token) as token:
            key = token.load_ec_key(config.ca_key_label)
            async with open_signer(config, key, writer) as signer:
                publisher = CrlPublisher(config, CrlIssuer.single(config, signer, ca_cert), writer, reader)
                for _ in range(times):
                    await asyncio.sleep(1.1)  # thisUpdate has whole seconds: each CRL after the last
                    await publisher.publish()
                    out.append(x509.load_der_x509_crl((config.crl.directory / "full.crl").read_bytes()))
    finally:
        writer.close()
        reader.dispose()
    return out


def _serials(crl: x509.CertificateRevocationList) -> set[str]:
    return {format(r.serial_number, "x") for r in crl}


def test_expired_entry_stays_on_one_crl_after_expiry_then_goes(ca: CaHome) -> None:
    now = dt.datetime.now(dt.UTC)
    _revoked_certificate(ca, "a1" * 8, now + dt.timedelta(days=300))  # alive
    _revoked_certificate(ca, "b2" * 8, now - dt.timedelta(days=1))  # already expired, newly revoked
    first, second = asyncio.run(_publish(ca, times=2))
    assert {"a1" * 8, "b2" * 8} <= _serials(first)  # listed once although expired: new since the last CRL
    assert "a1" * 8 in _serials(second)
    assert "b2" * 8 not in _serials(second)  # it was on a CRL issued beyond its validity: removed

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    _revoked_certificate(ca, "c3" * 8, soon)  # expires between the next two CRLs
    (third,) = asyncio.run(_publish(ca))  # published before its notAfter
    assert "c3" * 8 in _serials(third)
    while dt.datetime.now(dt.UTC) <= soon:
        asyncio.run(asyncio.sleep(0.5))
    fourth, fifth = asyncio.run(_publish(ca, times=2))
    assert "c3" * 8 in _serials(fourth)  # the first CRL after its expiry still lists it
    assert "c3" * 8 not in _serials(fifth)  # then it goes
    assert "a1" * 8 in _serials(fifth)


def test_many_entries_are_listed_signed_and_verifiable(ca: CaHome) -> None:
    count = 5000
    reasons = ("keyCompromise", "unspecified", "superseded", "cessationOfOperation")
    stamp = _stamp(dt.datetime.now(dt.UTC))
    rows = [
        (format(secrets.randbits(127) | (1 << 126), "x"), reasons[i % 4], stamp, "test") for i in range(count)
    ]
    with _db(ca) as db:
        db.executemany(
            "INSERT INTO revocations (serial, reason, revoked_at, revoked_by) VALUES (?,?,?,?)", rows
        )
    (crl,) = asyncio.run(_publish(ca))
    listed = {format(r.serial_number, "x"): r for r in crl}
    assert {r[0] for r in rows} <= set(listed)
    ca_cert = x509.load_pem_x509_certificate(Path(ca.summary["ca_cert"]).read_bytes())
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    plain = listed[rows[1][0]]  # unspecified: no reason extension (RFC 5280)
    assert not list(plain.extensions)
    compromised = listed[rows[0][0]].extensions.get_extension_for_class(x509.CRLReason).value
    assert compromised.reason == x509.ReasonFlags.key_compromise
