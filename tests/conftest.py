"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ckms_lab.throwaway_postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run; each test creates its own database."""
    server = PostgresServer().start()
    yield server
    server.stop()
