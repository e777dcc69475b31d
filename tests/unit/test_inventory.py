"""The inventory's search and device-ID matching over real SQLite and PostgreSQL, and the API's query parsing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ckms_app.daemon.inventory_routes import decode_cursor, encode_cursor, parse_query
from ckms_app.errors import BadRequest
from ckms_app.store import inventory
from ckms_app.store.schema import certificates, metadata, revocations

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SUBJECTS = {
    "a1": "CN=dev_1",
    "a2": "CN=devX1",  # '_' must not act as a LIKE wildcard
    "a3": "O=Acme,CN=dev-2",
    "a4": "CN=dev-2,O=Acme",
    "a5": "O=x\\,CN=dev-3",  # an escaped comma inside O: not a CN of dev-3
    "a6": "CN=dev-30",
    "a7": "OU=line\\,7,CN=dev-3,O=Acme",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The same rows in SQLite and in a real PostgreSQL (LIKE escaping and streaming differ by driver)."""
    if request.param == "sqlite":
        url = "sqlite://"
    else:
        url = request.getfixturevalue("postgres").create_database(f"inventory_{uuid.uuid4().hex[:12]}")
    eng = create_engine(url)
    metadata.create_all(eng)
    with eng.begin() as conn:
        for i, (serial, subject) in enumerate(sorted(SUBJECTS.items())):
            conn.execute(
                certificates.insert().values(
                    serial=serial,
                    kind="end-entity",
                    profile="device",
                    subject=subject,
                    sans="",
                    not_before=NOW - dt.timedelta(days=10),
                    not_after=NOW + dt.timedelta(days=i - 3, hours=1),  # a1..a3 expired by NOW, a4.. valid
                    issued_at=NOW - dt.timedelta(days=10 - i),
                    requested_by="op",
                    pubkey_sha256=serial * 10,
                    status="revoked" if serial == "a6" else "valid",
                    der=b"",
                )
            )
        conn.execute(
            revocations.insert().values(serial="a6", reason="keyCompromise", revoked_at=NOW, revoked_by="op")
        )
    yield eng
    eng.dispose()


def test_device_id_is_the_cn_and_matches_exactly(engine: Engine) -> None:
    assert inventory.device_id_of("O=Acme,CN=dev-2") == "dev-2"
    assert inventory.device_id_of("O=x\\,CN=dev-3") is None
    with engine.connect() as conn:
        found = {
            t.serial: t.named_by for t in inventory.certificates_of_devices(conn, ["dev_1", "dev-2", "dev-3"])
        }
    assert found == {"a1": "dev_1", "a3": "dev-2", "a4": "dev-2", "a7": "dev-3"}


def test_the_streamed_pass_of_a_large_recall_gives_the_same_answer(engine: Engine) -> None:
    names = ["dev_1", "dev-2", "dev-3"] + [f"other-{i}" for i in range(1200)]
    with engine.connect() as conn:
        found = sorted(t.serial for t in inventory.certificates_of_devices(conn, names))
    assert found == ["a1", "a3", "a4", "a7"]


def test_search_filters_and_pages(engine: Engine) -> None:
    with engine.connect() as conn:

        def serials(**kw: object) -> list[str]:
            rows, _ = inventory.search(conn, inventory.Filters(**kw), after=None, limit=100, now=NOW)  # type: ignore[arg-type]
            return [r.serial for r in rows]

        assert serials(device_id="dev-2") == ["a3", "a4"]
        assert serials(status="expired") == ["a1", "a2", "a3"]
        assert serials(status="revoked") == ["a6"]
        assert serials(status="valid") == ["a4", "a5", "a7"]
        assert serials(subject_contains="_") == ["a1"]
        assert serials(issued_from=NOW - dt.timedelta(days=5), issued_to=NOW - dt.timedelta(days=4)) == ["a6"]
        seen, after = [], None
        while True:
            rows, after = inventory.search(conn, inventory.Filters(), after=after, limit=2, now=NOW)
            seen += [r.serial for r in rows]
            if after is None:
                break
        assert seen == sorted(SUBJECTS)


def test_query_parsing_refuses_what_it_cannot_read() -> None:
    filters, cursor, limit = parse_query({"device_id": "dev-1", "limit": "5", "cursor": encode_cursor("ab")})
    assert filters.device_id == "dev-1" and cursor == "ab" and limit == 5
    assert parse_query({"issued_from": "2030-01-01"})[0].issued_from == NOW
    for bad in (
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"status": "lost"},
        {"device_id": "CN=x,O=y"},
        {"issued_from": "yesterday"},
        {"serial": "zz"},
        {"sort": "serial"},
        {"cursor": "djE6eno"},
    ):
        with pytest.raises(BadRequest):
            parse_query(bad)
    with pytest.raises(BadRequest):
        decode_cursor("%%%")
