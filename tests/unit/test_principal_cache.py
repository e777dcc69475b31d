"""The workers' principal cache stays bounded: devices re-enrolling with their own certificates each bring
a new client certificate, so the cache keeps the most recently used CACHE_SIZE principals (the soak's RSS
grew with every device before), still answers repeat clients from memory and is dropped when an entity
changes. Real SQLite store; the principal lookup itself is counted, not replaced."""

from __future__ import annotations

from pathlib import Path

from ckms_app.authority import rbac
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate


def test_cache_is_bounded_and_keeps_recent_clients(tmp_path: Path, monkeypatch):
    engine = open_engine(f"sqlite:///{tmp_path / 'ca.db'}")
    migrate(engine)
    looked_up: list[bytes | None] = []

    def lookup(conn, der, acl):
        looked_up.append(der)
        return rbac.Principal(f"entity-{len(looked_up)}", "operator", frozenset()), None

    monkeypatch.setattr(rbac, "resolve_principal", lookup)
    monkeypatch.setattr(rbac, "load_acl", lambda conn: frozenset())
    cache = rbac.PrincipalCache(engine)
    try:
        terminal = b"terminal-certificate"
        first = cache.resolve(terminal)
        for i in range(3 * rbac.CACHE_SIZE):
            cache.resolve(f"device-{i}".encode())
            if i % 100 == 0:
                assert cache.resolve(terminal) == first  # a client in use is never evicted
        assert len(cache._entries) == rbac.CACHE_SIZE
        lookups = len(looked_up)
        assert cache.resolve(terminal) == first and len(looked_up) == lookups  # from memory
        cache.resolve(b"device-0")  # long evicted: looked up again
        assert len(looked_up) == lookups + 1
        assert all(len(k) == 32 for k in cache._entries)  # digests, not certificates, are kept
    finally:
        cache.close()
        engine.dispose()
