"""Two CA nodes on one PostgreSQL database under concurrent load (A.41, A.42; issue 3's last line).

Node 1 is created with ``ckms ca init`` on a real PostgreSQL server; its CA key is backed up wrapped
under 2-of-3 custody and restored into node 2's own, fresh token (``ckms_lab.multinode`` drives the
real ``ckms hsm`` commands). Both daemons (each with its worker processes) then take enrolments,
revocations and forced CRL publications at the same time, and the test checks what a relying party
and an auditor would: every certificate is unique, stored and signed by the one CA key; the CRL
numbers form one strictly increasing sequence in commit order; every CRL verifies and holds every
revocation committed before it; the audit trail is one unbroken, verifiable chain.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import MIGRATIONS, migrate
from ckms_app.store.schema import (
    audit_chain_head,
    audit_events,
    certificates,
    crls,
    revocations,
    schema_migrations,
    security_state,
)
from ckms_lab import multinode
from ckms_lab.throwaway_postgres import PostgresServer

from .conftest import CaHome, Daemon, ckms, free_port, init_home, make_csr

NODES = 2
ENROLLERS_PER_NODE = 3
CERTS_PER_ENROLLER = 50  # 300 certificates in all
REVOCATIONS_PER_NODE = 20
PUBLICATIONS_PER_NODE = 8


@pytest.fixture(scope="module")
def two_nodes(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[CaHome]]:
    root = tmp_path_factory.mktemp("two-nodes")
    url = postgres.create_database("ckms_two_nodes")
    out = ckms(
        "ca",
        "init",
        "--home",
        str(root / "node1"),
        "--json",
        "--database-url",
        url,
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
        "--demo",
    )
    first = CaHome(root / "node1", json.loads(out.stdout))
    custody = multinode.split_custody(first.home, root / "custody")
    backup = root / "ca-key.backup"
    saved = multinode.backup_ca_key(first.home, custody, backup)
    assert {"ckms-ca-key", "ckms-audit-key"} <= set(saved["keys"])
    est_port, crl_port = free_port(), free_port()
    restored = multinode.add_node(
        first.home, root / "node2", backup=backup, custody=custody, est_port=est_port, crl_port=crl_port
    )
    assert {"ckms-ca-key", "ckms-audit-key"} <= set(restored["restored"])
    assert restored["pairwise_test"] == "passed"
    second = CaHome(
        root / "node2",
        {
            **first.summary,
            "est_url": first.est_url.replace(f":{load_config(first.home).server.est_port}/", f":{est_port}/"),
            "crl_url": f"http://127.0.0.1:{crl_port}/crl/full.crl",
            "credentials": {
                role: {
                    **c,
                    "cert": str(root / "node2" / Path(c["cert"]).relative_to(first.home)),
                    "key": str(root / "node2" / Path(c["key"]).relative_to(first.home)),
                }
                for role, c in first.summary["credentials"].items()
            },
            "ca_cert": str(root / "node2" / "ca" / "ca.pem"),
        },
    )
    # one database, two tokens: node 2's token is its own, and its PIN is not node 1's
    assert (second.home / "hsm" / "tokens").is_dir() and not (second.home / "db").exists()
    assert load_config(second.home).database_url == load_config(first.home).database_url == url
    assert (second.home / "secrets" / "token-pin").read_text() != (
        first.home / "secrets" / "token-pin"
    ).read_text()
    return url, [first, second]


def test_two_nodes_issue_revoke_and_publish_concurrently(two_nodes: tuple[str, list[CaHome]]) -> None:
    url, homes = two_nodes
    ca_cert = x509.load_pem_x509_certificate(homes[0].ca_cert.read_bytes())
    daemons = [Daemon(h) for h in homes]
    for d in daemons:
        d.start()
    issued: list[tuple[int, x509.Certificate]] = []
    revoked: list[str] = []
    published: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    csrs = [
        make_csr(f"device-n{n}-c{i}")[0]
        for n in range(NODES)
        for i in range(ENROLLERS_PER_NODE * CERTS_PER_ENROLLER)
    ]

    def client(node: int) -> CkmsClient:
        config = load_config(homes[node].home)
        return CkmsClient(config, Credentials(*homes[node].cred("operator")))

    def enroller(node: int, first: int) -> None:
        try:
            with client(node) as c:
                for i in range(first, first + CERTS_PER_ENROLLER):
                    cert = c.enroll(csrs[node * ENROLLERS_PER_NODE * CERTS_PER_ENROLLER + i])
                    with lock:
                        issued.append((node, cert))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            with lock:
                errors.append(f"enrol on node {node + 1}: {exc!r}")

    def revoker(node: int) -> None:
        rng = random.Random(node)
        done = 0
        try:
            with client(node) as c:
                while done < REVOCATIONS_PER_NODE:
                    with lock:  # any certificate, whichever node issued it, not yet revoked
                        candidates = (
                            [format(cert.serial_number, "x") for n, cert in issued if n != node or done % 2]
                            if issued
                            else []
                        )
                        candidates = [s for s in candidates if s not in revoked]
                        serial = rng.choice(candidates) if candidates else None
                        if serial is not None:
                            revoked.append(serial)
                    if serial is None:
                        threading.Event().wait(0.05)
                        continue
                    c.revoke(serial, "keyCompromise")
                    done += 1
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"revoke on node {node + 1}: {exc!r}")

    def publisher(node: int) -> None:
        try:
            with client(node) as c:
                for _ in range(PUBLICATIONS_PER_NODE):
                    answer = c.publish_crl()
                    with lock:
                        published.append({**answer, "node": node})
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"publish on node {node + 1}: {exc!r}")

    threads = [
        threading.Thread(target=enroller, args=(n, k * CERTS_PER_ENROLLER))
        for n in range(NODES)
        for k in range(ENROLLERS_PER_NODE)
    ]
    threads += [threading.Thread(target=revoker, args=(n,)) for n in range(NODES)]
    threads += [threading.Thread(target=publisher, args=(n,)) for n in range(NODES)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "load threads did not finish"
        assert not errors, errors[:5]
        # a last publication on each node, after every revocation: both must list all of them
        final = []
        for n in range(NODES):
            with client(n) as c:
                final.append(c.publish_crl())
        node_crls = [_fetch(homes[n], which) for n in range(NODES) for which in ("full", "delta")]
    finally:
        for d in daemons:
            d.stop()

    total = NODES * ENROLLERS_PER_NODE * CERTS_PER_ENROLLER
    assert len(issued) == total and len(revoked) == NODES * REVOCATIONS_PER_NODE
    assert {n for n, _ in issued} == set(range(NODES))
    # no duplicate serial among the certificates received, and each is in the database as issued
    serials = [format(cert.serial_number, "x") for _, cert in issued]
    assert len(set(serials)) == total
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            stored = {
                r.serial: r
                for r in conn.execute(
                    select(
                        certificates.c.serial, certificates.c.der, certificates.c.status, certificates.c.kind
                    )
                )
            }
            revoked_rows = conn.execute(
                select(revocations.c.id, revocations.c.serial).order_by(revocations.c.id)
            ).all()
    finally:
        engine.dispose()
    crl_rows, publish_events = _crl_state(url)
    end_entity = {s: r for s, r in stored.items() if r.kind == "end-entity"}
    assert len(end_entity) == total and set(end_entity) == set(serials)
    for _, cert in issued:
        row = end_entity[format(cert.serial_number, "x")]
        assert row.der == cert.public_bytes(serialization.Encoding.DER)
        cert.verify_directly_issued_by(ca_cert)  # signed by the one CA key, in either token
    assert {s for s, r in end_entity.items() if r.status == "revoked"} == set(revoked)
    assert [r.serial for r in revoked_rows if r.serial in end_entity] and Counter(
        r.serial for r in revoked_rows
    ).most_common(1)[0][1] == 1

    # one CRL sequence, whose numbers each publication got once and in commit order
    in_commit_order = _assert_one_crl_sequence(crl_rows, publish_events, ca_cert, revoked)
    assert {p["full_crl_number"] for p in published + final} <= set(in_commit_order)
    assert len({p["full_crl_number"] for p in published}) == NODES * PUBLICATIONS_PER_NODE
    public_key = ca_cert.public_key()

    # what each node serves over HTTP and holds in its own CRL directory verifies under the CA
    newest = max(p["full_crl_number"] for p in final)
    for der in node_crls:
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(public_key)  # type: ignore[arg-type]
    assert (
        x509.load_der_x509_crl(node_crls[0])
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        == newest
    )
    for home, answer in zip(homes, final, strict=True):
        local = x509.load_der_x509_crl((home.home / "crl" / "full.crl").read_bytes())
        assert local.is_signature_valid(public_key)  # type: ignore[arg-type]
        assert (
            local.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            == answer["full_crl_number"]
        )
        assert {c.serial_number for c in local} == {int(s, 16) for s in revoked}

    # one unbroken audit chain, whichever node verifies it, with a seal made by each node's token
    for home in homes:
        proc = ckms(
            "audit",
            "seal",
            "--home",
            str(home.home),
            "--password-file",
            str(home.home / "credentials" / "administrator.password"),
            "--cert",
            str(home.cred("administrator")[0]),
        )
        assert json.loads(proc.stdout)["sealed_up_to_seq"]
    for home in homes:
        proc = ckms(
            "audit",
            "verify",
            "--json",
            "--home",
            str(home.home),
            "--password-file",
            str(home.home / "credentials" / "auditor.password"),
            "--cert",
            str(home.cred("auditor")[0]),
        )
        report = json.loads(proc.stdout)
        assert report["ok"] and report["seals_checked"] and report["seals"] >= NODES, report


def _assert_one_crl_sequence(
    crl_rows: list,
    publish_events: list,
    ca_cert: x509.Certificate,  # type: ignore[type-arg]
    revoked: list[str],
) -> list[int]:
    """The CRLs form one sequence: in the order publications committed (the audit chain's order)
    their numbers strictly increase, every stored CRL belongs to one of them, each verifies under the
    CA and lists every revocation an earlier CRL listed; the newest lists exactly ``revoked``."""
    in_commit_order = [json.loads(e.detail)["full"] for e in publish_events]
    assert in_commit_order == sorted(in_commit_order) and len(set(in_commit_order)) == len(in_commit_order)
    numbers = [r.crl_number for r in crl_rows]
    assert sorted({n for f in in_commit_order for n in (f, f + 1)}) == numbers
    public_key = ca_cert.public_key()
    previous: set[int] = set()
    for row in crl_rows:
        crl = x509.load_der_x509_crl(row.der)
        assert crl.is_signature_valid(public_key)  # type: ignore[arg-type]
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == row.crl_number
        if row.kind in ("full", "base"):
            listed = {c.serial_number for c in crl}
            assert previous <= listed, f"CRL {row.crl_number} lost revocations listed by an earlier CRL"
            previous = listed
        else:
            base = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
            assert base in numbers and base < row.crl_number
    assert previous == {int(s, 16) for s in revoked}
    return in_commit_order


def _crl_state(url: str) -> tuple[list, list]:  # type: ignore[type-arg]
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            crl_rows = conn.execute(select(crls).order_by(crls.c.crl_number)).all()
            publish_events = conn.execute(
                select(audit_events.c.seq, audit_events.c.detail)
                .where(audit_events.c.action == "crl.publish", audit_events.c.outcome == "success")
                .order_by(audit_events.c.seq)
            ).all()
    finally:
        engine.dispose()
    return crl_rows, publish_events


def test_workers_of_one_sqlite_node_share_one_crl_sequence(tmp_path: Path) -> None:
    """On SQLite the worker processes of one node publish concurrently too (lock file, not the write lock)."""
    home = init_home(tmp_path / "sqlite-node")
    ca_cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    config = load_config(home.home)
    creds = Credentials(*home.cred("operator"))
    daemon = Daemon(home)
    daemon.start()
    published: list[int] = []
    revoked: list[str] = []
    errors: list[str] = []
    try:
        with CkmsClient(config, creds) as c:
            serials = [format(c.enroll(make_csr(f"device-w{i}")[0]).serial_number, "x") for i in range(12)]

        def publisher() -> None:
            try:
                for _ in range(5):
                    with CkmsClient(config, creds) as c:  # a new connection: any worker may take it
                        published.append(c.publish_crl()["full_crl_number"])
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        def revoker(mine: list[str]) -> None:
            try:
                for serial in mine:
                    with CkmsClient(config, creds) as c:
                        c.revoke(serial, "superseded")
                    revoked.append(serial)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        threads = [threading.Thread(target=publisher) for _ in range(4)]
        threads += [threading.Thread(target=revoker, args=(serials[k::2],)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[:3]
        with CkmsClient(config, creds) as c:
            published.append(c.publish_crl()["full_crl_number"])
    finally:
        daemon.stop()
    assert len(set(published)) == len(published) == 21
    crl_rows, publish_events = _crl_state(load_config(home.home).database_url)
    assert set(published) <= set(_assert_one_crl_sequence(crl_rows, publish_events, ca_cert, revoked))
    local = x509.load_der_x509_crl((home.home / "crl" / "full.crl").read_bytes())
    assert local.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == max(published)


AUDIT_KEY_PROBE = r"""
import json, sys
from pathlib import Path
from ckms_app.audit.seals import ensure_audit_key
from ckms_app.config import load_config
from ckms_app.errors import HsmError
from ckms_app.hsm.token import Token
cfg = load_config(Path(sys.argv[1]))
out = {}
with Token(cfg.token) as token:
    curve = token.load_ec_key(cfg.ca_key_label).curve_info
    out["same"] = ensure_audit_key(token, cfg.home, curve).label
    token.generate_ec_key("other-audit-key", curve)
    for case, label in (("missing", "no-such-audit-key"), ("different", "other-audit-key")):
        try:
            ensure_audit_key(token, cfg.home, curve, label)
            out[case] = "accepted"
        except HsmError as exc:
            out[case] = str(exc)
print(json.dumps(out))
"""


def test_a_token_without_the_cas_audit_key_does_not_start_a_second_one(tmp_path: Path) -> None:
    """A node whose token lacks the CA's audit key, or holds another, must not seal: its seals and
    the other nodes' would fail each other's verification. It is told to restore the key instead."""
    home = init_home(tmp_path / "audit-key-node")
    probe = subprocess.run(
        [sys.executable, "-c", AUDIT_KEY_PROBE, str(home.home)], capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    out = json.loads(probe.stdout)
    assert out["same"] == "ckms-audit-key"
    assert "restore it from the CA's wrapped backup" in out["missing"]
    assert "is not the key this CA's trail is sealed with" in out["different"]


def test_nodes_starting_together_migrate_once(postgres: PostgresServer) -> None:
    """Nodes that start at the same moment on a fresh (or older) database apply each migration once."""
    url = postgres.create_database("ckms_migrate_race")
    engines = [open_engine(url) for _ in range(4)]
    start = threading.Barrier(len(engines))
    versions: list[int] = []
    failures: list[str] = []

    def node(engine) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        try:
            versions.append(migrate(engine))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(repr(exc))

    threads = [threading.Thread(target=node, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not failures, failures
        assert versions == [max(v for v, _ in MIGRATIONS)] * len(engines)
        with engines[0].connect() as conn:
            applied = [r.version for r in conn.execute(select(schema_migrations.c.version))]
            heads = conn.execute(select(audit_chain_head)).all()
            counters = [r.name for r in conn.execute(select(security_state.c.name))]
        assert sorted(applied) == [v for v, _ in MIGRATIONS]
        assert len(heads) == 1 and counters.count("entity_generation") == 1
    finally:
        for e in engines:
            e.dispose()


def _fetch(home: CaHome, which: str) -> bytes:
    url = home.crl_url.rsplit("/", 1)[0] + f"/{which}.crl"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback test URL
        assert response.status == 200
        return bytes(response.read())
