"""The TLS and connection settings of ckms.toml [server]/[audit], and the TLS restriction on a real
OpenSSL context (issue 11 items 1–3; the wire behaviour is tested in tests/integration)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ckms_app.config import TLS_CIPHERSUITES, TLS_GROUPS, AuditConfig, parse_config
from ckms_app.daemon.transport import ClientTable, restrict_tls13
from ckms_app.errors import ConfigError

RAW = {
    "ca": {"name": "t"},
    "hsm": {"module": "m", "token_label": "t", "pin_file": "pin"},
    "server": {"tls_cert": "c", "tls_key": "k"},
    "database": {"url": "sqlite:///db"},
    "profiles": {"device": {"policy_oid": "1.3.6.1.4.1.55555.1"}},
}


def _server(**keys: object):  # type: ignore[no-untyped-def]
    raw = {**RAW, "server": {**RAW["server"], **keys}}
    return parse_config(Path("/h"), raw).server


def test_defaults_are_the_guidance_set() -> None:
    srv = _server()
    assert srv.tls_groups == ("P-256", "P-384") == TLS_GROUPS
    assert srv.tls_ciphersuites == ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384") == TLS_CIPHERSUITES
    assert srv.header_timeout_seconds == 10 and srv.body_timeout_seconds == 30
    assert srv.max_connections_per_client == 64


def test_openssl_style_strings_as_the_role_writes_them() -> None:
    srv = _server(tls_groups="P-384", tls_ciphersuites="TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
                  header_timeout_seconds="2.5")  # fmt: skip
    assert srv.tls_groups == ("P-384",)
    assert srv.tls_ciphersuites == ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
    assert srv.header_timeout_seconds == 2.5


@pytest.mark.parametrize(
    "keys",
    [
        {"tls_groups": []},
        {"tls_ciphersuites": "ECDHE-ECDSA-AES128-GCM-SHA256"},
        {"tls_groups": 5},
        {"header_timeout_seconds": 0},
        {"max_connections_per_client": 0},
        {"body_timeout_seconds": "soon"},
    ],
)
def test_bad_settings_are_config_errors(keys: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _server(**keys)


def test_audit_summary_settings_validated() -> None:
    with pytest.raises(ConfigError):
        AuditConfig(refusal_summary_seconds=0)


def test_restrict_tls13_on_a_real_context() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrict_tls13(ctx, ("P-256", "P-384"), ("TLS_AES_256_GCM_SHA384",))
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"} == {"TLS_AES_256_GCM_SHA384"}
    with pytest.raises(ConfigError, match="tls_groups"):
        restrict_tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ("no-such-group",), TLS_CIPHERSUITES)
    with pytest.raises(ConfigError, match="tls_ciphersuites"):
        restrict_tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), TLS_GROUPS, ("TLS_NO_SUCH_SUITE",))


def test_client_table_counts_across_workers() -> None:
    table = ClientTable(2, buckets=64)
    table.use_row(0)
    assert table.acquire("10.0.0.5", 2) and table.acquire("10.0.0.5", 2)
    assert not table.acquire("10.0.0.5", 2)  # at the cap
    table.use_row(1)  # another worker sees the first one's connections
    assert table.open_count("10.0.0.5") == 2 and not table.acquire("10.0.0.5", 2)
    table.use_row(0)  # a replaced worker starts its row from zero
    assert table.open_count("10.0.0.5") == 0
    table.release("10.0.0.5")  # never below zero
    assert table.open_count("10.0.0.5") == 0
