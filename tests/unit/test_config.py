"""ckms.toml has one loader (ckms_app.config) and it fails loudly: no table is silently read as empty."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w

from ckms_app.authority.ceremony import InitOptions, default_config
from ckms_app.config import load_config
from ckms_app.errors import ConfigError


def write_home(tmp_path: Path, **tables: dict) -> Path:  # type: ignore[type-arg]
    raw = default_config(tmp_path, InitOptions(clock_source="none"), "secrets/token-pin", None)
    raw.update(tables)
    (tmp_path / "ckms.toml").write_text(tomli_w.dumps(raw))
    return tmp_path


def test_audit_and_alert_tables_are_part_of_the_one_config(tmp_path: Path) -> None:
    home = write_home(
        tmp_path,
        audit={"seal_every_records": 5, "key_label": "k"},
        alerts={"command": "/usr/local/bin/page", "syslog": False},
    )
    config = load_config(home)
    assert (config.audit.seal_every_records, config.audit.key_label) == (5, "k")
    assert config.alerts.command == ("/usr/local/bin/page",) and not config.alerts.syslog
    assert config.alerts.fallback_file == home / "log" / "alerts.log"


def test_defaults_when_the_tables_are_absent(tmp_path: Path) -> None:
    config = load_config(write_home(tmp_path))
    assert config.audit.seal_every_records == 1000 and config.alerts.syslog


def test_a_syntax_error_is_an_error_not_an_empty_table(tmp_path: Path) -> None:
    home = write_home(tmp_path)
    (home / "ckms.toml").write_text((home / "ckms.toml").read_text() + "\n[audit\nseal_every_records = 1\n")
    with pytest.raises(ConfigError, match="ckms.toml"):
        load_config(home)


def test_a_bad_value_names_its_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[audit\]"):
        load_config(write_home(tmp_path, audit={"seal_every_records": "often"}))


@pytest.mark.parametrize("url", ["file:///etc/shadow", "ftp://alerts.example/x", "/var/lib/x"])
def test_alert_webhook_must_be_a_web_url(tmp_path: Path, url: str) -> None:
    """urllib would open any scheme: an alert must never read a local file (bandit B310, E.29)."""
    with pytest.raises(ConfigError, match=r"\[alerts\] webhook must be an https://"):
        load_config(write_home(tmp_path, alerts={"webhook": url}))
    ok = load_config(write_home(tmp_path, alerts={"webhook": "https://alerts.example/hook"}))
    assert ok.alerts.webhook == "https://alerts.example/hook"


def test_crl_addresses_of_the_first_key_never_move_and_later_keys_get_their_own() -> None:
    """Every certificate names its CRLs' addresses; generation 1 keeps /crl/<which>.crl for good (the
    certificates it issued point there), a rolled-over key publishes under /crl/g<n>/ (issue 14 part 3)."""
    from ckms_app.config import ServerConfig

    server = ServerConfig(
        listen="0.0.0.0",
        est_port=8443,
        crl_port=8080,
        public_host="fe80::1",
        tls_cert=Path("tls.pem"),
        tls_key=Path("tls.key"),
    )
    assert server.crl_url() == "http://[fe80::1]:8080/crl/full.crl"
    assert server.crl_url("delta") == "http://[fe80::1]:8080/crl/delta.crl"
    assert server.crl_url("full", generation=2) == "http://[fe80::1]:8080/crl/g2/full.crl"
    with pytest.raises(ConfigError, match="no CRL called"):
        server.crl_url("latest")
    with pytest.raises(ConfigError, match="count from 1"):
        server.crl_url("full", generation=0)


def test_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    """The workers' event loop: uvloop by default, the standard loop as the fallback, nothing else."""
    import asyncio

    import uvloop

    from ckms_app.config import ServerConfig
    from ckms_app.daemon.supervisor import event_loop_factory

    def server(**extra: str) -> ServerConfig:
        return ServerConfig(
            listen="127.0.0.1",
            est_port=8443,
            crl_port=8080,
            public_host="127.0.0.1",
            tls_cert=Path("tls.pem"),
            tls_key=Path("tls.key"),
            **extra,
        )

    assert server().event_loop == "uvloop"
    with pytest.raises(ConfigError, match="event_loop must be uvloop or asyncio"):
        server(event_loop="trio")
    for name, kind in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        config = SimpleNamespace(server=server(event_loop=name))
        loop = event_loop_factory(config)()  # type: ignore[arg-type]
        try:
            assert isinstance(loop, kind)
        finally:
            loop.close()
