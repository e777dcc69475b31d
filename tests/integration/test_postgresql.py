"""The CA on PostgreSQL: same schema and migrations, real server, real daemon (A.41, A.42)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from sqlalchemy import func, select, text

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import certificates
from ckms_lab.throwaway_postgres import PostgresServer

from .conftest import CaHome, Daemon, ckms, free_port, make_csr


def test_migrations_are_idempotent_on_postgresql(postgres: PostgresServer) -> None:
    engine = open_engine(postgres.create_database("ckms_migrate"))
    assert migrate(engine) == migrate(engine)
    with engine.connect() as conn:
        tables = {
            r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))
        }
    assert {"certificates", "revocations", "crls", "entities", "audit_events", "schema_migrations"} <= tables
    engine.dispose()


def test_daemon_on_postgresql_issues_revokes_and_publishes(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("ckms_e2e")
    out = ckms(
        "ca",
        "init",
        "--home",
        str(tmp_path / "pg"),
        "--json",
        "--database-url",
        url,
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
        "--demo",
    )
    ca = CaHome(tmp_path / "pg", json.loads(out.stdout))
    daemon = Daemon(ca)
    daemon.start()
    try:
        config = load_config(ca.home)
        with CkmsClient(config, Credentials(*ca.cred("operator"))) as client:
            certs = [client.enroll(make_csr(f"device-pg-{i}")[0]) for i in range(20)]
            client.revoke(format(certs[0].serial_number, "x"), "keyCompromise")
            published = client.publish_crl()
        engine = open_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(
                select(func.count()).select_from(certificates).where(certificates.c.kind == "end-entity")
            ).scalar()
        engine.dispose()
        assert stored == 20
        crl_path = tmp_path / "full.crl"
        ckms("crl", "fetch", "--home", str(ca.home), "--out", str(crl_path))
        crl = x509.load_der_x509_crl(crl_path.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(certs[0].serial_number) is not None
        assert (
            crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            == published["full_crl_number"]
        )
    finally:
        daemon.stop()
