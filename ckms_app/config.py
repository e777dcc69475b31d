"""The CA home's configuration file (``ckms.toml``) as typed, validated objects.

One file describes one CA: where its token is, how the daemon listens, where the database is,
how CRLs are published and which certificate profiles exist. Relative paths are relative to the
CA home, so a home directory can be moved or restored as a unit.

Why this module is long: it is the one loader of ckms.toml (every table, its defaults and its
validation in one place, so no other module reads the file), and the daemon's transport settings
(TLS algorithms, timeouts, connection caps) added a table's worth of keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckms_app.algorithms import CURVES
from ckms_app.errors import ConfigError

CONFIG_NAME = "ckms.toml"
# A.62: the end of life of each curve unless [algorithms] secure_until changes it
DEFAULT_SECURE_UNTIL = {name: curve.secure_until for name, curve in CURVES.items()}


@dataclass(frozen=True)
class TokenConfig:
    """Where the token is and how to log in. The PIN itself is read from ``pin_file`` at open."""

    module: str
    token_label: str
    pin_file: Path
    softhsm_conf: Path | None = None  # set only for a SoftHSM token owned by this CA home


AUDIT_KEY_LABEL = "ckms-audit-key"


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: how often the hash chain is sealed with the HSM audit key (all keys optional)."""

    key_label: str = AUDIT_KEY_LABEL
    seal_every_records: int = 1000
    seal_interval_seconds: float = 60.0  # also the heartbeat: an idle CA still seals this often
    # Every seal is also appended here, outside the database (and sent to syslog): the anchor that
    # shows a cut tail. None only for a Config built without a home.
    seal_log: Path | None = None
    seal_syslog: bool = True
    # ckms audit verify fails when the newest seal is older than the interval plus this slack (0: off)
    seal_slack_seconds: float = 300.0
    # Unauthenticated and refused-at-the-door requests are counted, not recorded one by one: each worker
    # records the first refusal_records_per_interval of an interval one by one (auth.deny), then at most one
    # auth.deny.summary record per interval, of at most refusal_summary_max_entries (method, route,
    # reason, source) counts (see ckms_app.audit.refusals).
    refusal_summary_seconds: float = 60.0
    refusal_summary_max_entries: int = 50
    refusal_records_per_interval: int = 20

    def __post_init__(self) -> None:
        if not self.refusal_summary_seconds > 0 or self.refusal_summary_max_entries < 1:
            raise ConfigError(
                "[audit] refusal_summary_seconds and refusal_summary_max_entries must be positive"
            )
        if self.refusal_records_per_interval < 0:
            raise ConfigError("[audit] refusal_records_per_interval must not be negative")

    @property
    def max_seal_age_seconds(self) -> float | None:
        return None if self.seal_slack_seconds <= 0 else self.seal_interval_seconds + self.seal_slack_seconds


@dataclass(frozen=True)
class AlertConfig:
    """``[alerts]``: where real-time alerts go (all keys optional)."""

    syslog: bool = True
    syslog_address: str = "/dev/log"
    command: tuple[str, ...] = ()
    webhook: str | None = None
    timeout_seconds: float = 10.0
    fallback_file: Path | None = None  # where alerts go when there is no syslog socket


@dataclass(frozen=True)
class ExpiryConfig:
    """``[expiry]``: ``ckms expiry check`` warns this many days before a certificate expires (part of
    A.59: a certificate, the CA's above all, is replaced before it lapses, not after)."""

    warn_days: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.warn_days <= 3650:
            raise ConfigError(f"[expiry] warn_days must be between 1 and 3650, not {self.warn_days}")


SOURCES = ("chrony", "none")


@dataclass(frozen=True)
class ClockConfig:
    source: str = "none"
    max_offset_seconds: float = 10.0
    cache_seconds: float = 1.0
    chronyc: str = "chronyc"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"[clock] source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.max_offset_seconds <= 0:
            raise ConfigError("[clock] max_offset_seconds must be positive")


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """``--home`` wins, then ``CKMS_HOME``; there is no implicit default location."""
    value = home if home is not None else os.environ.get("CKMS_HOME")
    if not value:
        raise ConfigError("no CA home given: pass --home DIR or set CKMS_HOME")
    return Path(value).expanduser().resolve()


@dataclass(frozen=True)
class Profile:
    """What one kind of certificate looks like and which requests may have one (A.05)."""

    name: str
    validity_days: int
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    policy_oid: str
    subject_cn_pattern: str
    allowed_subject_attributes: tuple[str, ...]
    san_required: bool
    san_dns_pattern: str | None
    san_uri_pattern: str | None
    allowed_curves: tuple[str, ...]
    backdate_seconds: int = 60
    #: A.62 crypto-periods: no certificate of this profile is valid past this instant for a key or a
    #: signature on the curve named (``[algorithms] secure_until``; by default the CRYPTREC dates in
    #: :mod:`ckms_app.algorithms`). Kept on the profile so that every builder of its certificates sees it.
    secure_until: dict[str, dt.datetime] = field(default_factory=lambda: dict(DEFAULT_SECURE_UNTIL))

    def __post_init__(self) -> None:
        if self.validity_days <= 0:
            raise ConfigError(f"profile {self.name}: validity_days must be positive")
        for pattern in (self.subject_cn_pattern, self.san_dns_pattern, self.san_uri_pattern):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"profile {self.name}: bad pattern {pattern!r}: {exc}") from None
        if not re.fullmatch(r"[0-2](\.\d+)+", self.policy_oid):
            raise ConfigError(f"profile {self.name}: policy_oid {self.policy_oid!r} is not an OID")
        unknown = set(self.allowed_curves) - set(CURVES)
        if unknown:
            raise ConfigError(f"profile {self.name}: unsupported curves {sorted(unknown)}")


# The guidance's set (A.62, A.64): ECDH on P-256 (P-384), AES-GCM; TLS 1.3 is the only version.
TLS_GROUPS = ("P-256", "P-384")
TLS_CIPHERSUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")


def _names(value: Any, where: str) -> tuple[str, ...]:
    """A list of names, or one string of names separated by ':' / ',' / blanks (OpenSSL style)."""
    if isinstance(value, str):
        return tuple(v for v in re.split(r"[:,\s]+", value) if v)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a list of names, not {value!r}")


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    est_port: int
    crl_port: int
    public_host: str  # the name/address clients use; in the TLS certificate and in URLs
    tls_cert: Path
    tls_key: Path
    shutdown_grace_seconds: float = 10.0
    max_request_bytes: int = 16384
    workers: int = 0  # worker processes; 0 = one per CPU
    # each worker's event loop: uvloop (libuv; TLS and sockets in C, a quarter less CPU per request) or
    # the standard library's asyncio, the fallback if uvloop ever misbehaves on a platform
    event_loop: str = "uvloop"
    # TLS 1.3 only; key exchange and AEAD suites limited to the guidance's set (A.62, A.64)
    tls_groups: tuple[str, ...] = TLS_GROUPS
    tls_ciphersuites: tuple[str, ...] = TLS_CIPHERSUITES
    # Slow or idle clients (both listeners): the request headers must arrive within header_timeout of the
    # connection (or of the request's first byte), a body within body_timeout of its headers; an idle
    # keep-alive connection is closed after keepalive_timeout. TLS handshakes get header_timeout too.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 30.0
    max_connections: int = 512  # open connections per worker and listener; more are closed at once
    max_connections_per_client: int = 64  # per source address, over all workers and both listeners

    def __post_init__(self) -> None:
        for name in ("header_timeout_seconds", "body_timeout_seconds", "keepalive_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[server] {name} must be positive")
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ConfigError("[server] max_connections and max_connections_per_client must be at least 1")
        if not self.tls_groups or not self.tls_ciphersuites:
            raise ConfigError("[server] tls_groups and tls_ciphersuites must not be empty")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"[server] event_loop must be uvloop or asyncio, not {self.event_loop!r}")
        bad = [s for s in self.tls_ciphersuites if not re.fullmatch(r"TLS_[A-Z0-9_]+", s)]
        if bad:
            raise ConfigError(f"[server] tls_ciphersuites: {bad} are not TLS 1.3 suite names")
        bad = [g for g in self.tls_groups if not re.fullmatch(r"[A-Za-z0-9_-]+", g)]
        if bad:
            raise ConfigError(f"[server] tls_groups: {bad} are not group names")

    @property
    def est_url(self) -> str:
        return f"https://{_url_host(self.public_host)}:{self.est_port}/.well-known/est"

    @property
    def crl_base_url(self) -> str:
        return f"http://{_url_host(self.public_host)}:{self.crl_port}/crl"

    def crl_url(self, which: str = "full", generation: int = 1) -> str:
        """The address of a CRL (``full``, ``delta`` or ``base``) of one generation of the CA's key, the one
        place certificates' CRL distribution points and freshest-CRL pointers come from.

        Generation 1 (the CA's first key) keeps ``/crl/<which>.crl`` for good: every certificate it issued
        names that address. A later key (after a rollover) publishes under ``/crl/g<n>/``."""
        if which not in ("full", "delta", "base"):
            raise ConfigError(f"no CRL called {which!r} (full, delta or base)")
        if generation < 1:
            raise ConfigError(f"CA key generations count from 1, not {generation}")
        prefix = "" if generation == 1 else f"/g{generation}"
        return f"{self.crl_base_url}{prefix}/{which}.crl"


def _url_host(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


@dataclass(frozen=True)
class CrlConfig:
    validity_hours: int = 24  # nextUpdate of a full CRL
    delta_validity_hours: int = 1
    full_interval_seconds: int = 3600  # a fresh full CRL at least this often
    max_publish_delay_seconds: int = 60  # a revocation is in a published CRL within this time
    directory: Path = Path("crl")


@dataclass(frozen=True)
class CsrPolicy:
    max_bytes: int = 4096
    duplicate_csr: str = "return-existing"  # or "reject"

    def __post_init__(self) -> None:
        if self.duplicate_csr not in ("return-existing", "reject"):
            raise ConfigError("csr.duplicate_csr must be 'return-existing' or 'reject'")


@dataclass(frozen=True)
class CaGeneration:
    """One key of the CA (``[ca]``, ``[ca.next]`` or a ``[[ca.retired]]`` entry; docs/ca-key-rollover.md).

    Generations count from 1 and never repeat. The active generation issues certificates and signs CRLs;
    the next one (between ``rollover begin`` and ``activate``) is trusted but signs nothing; a retired one
    signs only the CRLs of the certificates it issued, until the last of them has expired."""

    generation: int
    key_label: str
    cert: Path
    # NewWithOld and OldWithNew link certificates (PEM) made when this generation was begun; None for the first
    links: Path | None = None

    def __post_init__(self) -> None:
        if self.generation < 1:
            raise ConfigError(f"CA key generations count from 1, not {self.generation}")


@dataclass(frozen=True)
class Config:
    home: Path
    ca_name: str
    ca_key_label: str
    ca_cert: Path
    ca_chain: Path | None
    token: TokenConfig
    server: ServerConfig
    database_url: str
    crl: CrlConfig
    csr: CsrPolicy
    lint_enabled: bool
    lint_binary: str | None
    default_profile: str
    profiles: dict[str, Profile] = field(default_factory=dict)
    clock: ClockConfig = field(default_factory=ClockConfig)  # [clock]: the signing clock gate (A.33)
    audit: AuditConfig = field(default_factory=lambda: AuditConfig())  # [audit]: seals of the hash chain
    alerts: AlertConfig = field(default_factory=lambda: AlertConfig())  # [alerts]: real-time alerts (F.15)
    # [issuance] device_reenrolment: a device may renew itself with its own valid certificate (RFC 7030
    # §4.2.2). Off by default: the guidance's model routes every request through the terminal (A.46).
    device_reenrolment: bool = False
    # [algorithms] secure_until: the end of life of each curve (A.62), the same mapping every profile holds
    secure_until: dict[str, dt.datetime] = field(default_factory=lambda: dict(DEFAULT_SECURE_UNTIL))
    expiry: ExpiryConfig = field(default_factory=ExpiryConfig)  # [expiry]: ckms expiry check
    # [ca] generation, [ca.next], [[ca.retired]]: the CA's keys over its rollovers (A.59, A.65)
    ca_generation: int = 1
    ca_links: Path | None = None
    ca_next: CaGeneration | None = None
    ca_retired: tuple[CaGeneration, ...] = ()

    @property
    def active_generation(self) -> CaGeneration:
        return CaGeneration(self.ca_generation, self.ca_key_label, self.ca_cert, self.ca_links)

    def signing_generations(self) -> tuple[CaGeneration, ...]:
        """The keys that sign CRLs: the active one first, then the retired ones (newest first)."""
        return (self.active_generation, *sorted(self.ca_retired, key=lambda g: -g.generation))

    def generations(self) -> tuple[CaGeneration, ...]:
        """Every key relying parties must trust: the active, the next (if begun) and the retired ones."""
        staged = (self.ca_next,) if self.ca_next is not None else ()
        return (*self.signing_generations(), *staged)

    def profile(self, name: str | None) -> Profile:
        key = name or self.default_profile
        try:
            return self.profiles[key]
        except KeyError:
            raise ConfigError(f"no certificate profile named {key!r}") from None


def _path(home: Path, value: str | None) -> Path | None:
    if value is None or value == "":
        return None
    p = Path(value)
    return p if p.is_absolute() else home / p


def _required_path(home: Path, value: str, where: str) -> Path:
    """A path the CA cannot run without: an empty value is a ConfigError, never None."""
    path = _path(home, value)
    if path is None:
        raise ConfigError(f"{where}: must not be empty")
    return path


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise ConfigError(f"{where}: missing key {key!r}") from None


def read_raw_config(home: Path) -> dict[str, Any]:
    """The parsed TOML of the home's ckms.toml; a missing or malformed file is a ConfigError, never {}."""
    path = home / CONFIG_NAME
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run 'ckms ca init --home {home}' first") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(home: Path) -> Config:
    """The one loader of ckms.toml: every table the CA reads, typed and validated."""
    return parse_config(home, read_raw_config(home))


def parse_config(home: Path, raw: dict[str, Any]) -> Config:
    """The typed configuration, or a :class:`ConfigError`: a value of the wrong type anywhere in the file
    (a table where a number belongs, text where a list does) says where, never raises from deep inside."""
    try:
        return _parse_config(home, raw)
    except (TypeError, ValueError, AttributeError, re.error) as exc:
        raise ConfigError(f"{home / CONFIG_NAME}: a value has the wrong type or form ({exc})") from None


def _parse_config(home: Path, raw: dict[str, Any]) -> Config:
    ca = _req(raw, "ca", "ckms.toml")
    hsm = _req(raw, "hsm", "ckms.toml")
    srv = _req(raw, "server", "ckms.toml")
    db = _req(raw, "database", "ckms.toml")
    crl = raw.get("crl", {})
    csr = raw.get("csr", {})
    lint = raw.get("lint", {})
    token = TokenConfig(
        module=_req(hsm, "module", "[hsm]"),
        token_label=_req(hsm, "token_label", "[hsm]"),
        pin_file=_required_path(home, _req(hsm, "pin_file", "[hsm]"), "[hsm] pin_file"),
        softhsm_conf=_path(home, hsm.get("softhsm_conf")),
    )
    server = ServerConfig(
        listen=srv.get("listen", "127.0.0.1"),
        est_port=int(srv.get("est_port", 8443)),
        crl_port=int(srv.get("crl_port", 8080)),
        public_host=srv.get("public_host", "127.0.0.1"),
        tls_cert=_required_path(home, _req(srv, "tls_cert", "[server]"), "[server] tls_cert"),
        tls_key=_required_path(home, _req(srv, "tls_key", "[server]"), "[server] tls_key"),
        shutdown_grace_seconds=float(srv.get("shutdown_grace_seconds", 10.0)),
        max_request_bytes=int(srv.get("max_request_bytes", 16384)),
        workers=int(srv.get("workers", 0)),
        event_loop=str(srv.get("event_loop", "uvloop")),
        **_server_hardening(srv),
    )
    url = _req(db, "url", "[database]")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{home / url.removeprefix('sqlite:///')}"
    secure_until = _secure_until(raw.get("algorithms", {}))
    profiles = {}
    for name, p in raw.get("profiles", {}).items():
        profiles[name] = Profile(
            name=name,
            validity_days=int(p.get("validity_days", 365)),
            key_usage=tuple(p.get("key_usage", ["digital_signature"])),
            extended_key_usage=tuple(p.get("extended_key_usage", ["client_auth"])),
            policy_oid=_req(p, "policy_oid", f"[profiles.{name}]"),
            subject_cn_pattern=p.get("subject_cn_pattern", r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
            allowed_subject_attributes=tuple(
                p.get("allowed_subject_attributes", ["CN", "O", "OU", "serialNumber"])
            ),
            san_required=bool(p.get("san_required", False)),
            san_dns_pattern=p.get("san_dns_pattern"),
            san_uri_pattern=p.get("san_uri_pattern"),
            allowed_curves=tuple(p.get("allowed_curves", ["P-256", "P-384"])),
            backdate_seconds=int(p.get("backdate_seconds", 60)),
            secure_until=secure_until,
        )
    default_profile = raw.get("issuance", {}).get("default_profile", "device")
    if default_profile not in profiles:
        raise ConfigError(f"default profile {default_profile!r} is not defined under [profiles]")
    return Config(
        home=home,
        ca_name=_req(ca, "name", "[ca]"),
        ca_key_label=ca.get("key_label", "ckms-ca-key"),
        ca_cert=_required_path(home, ca.get("cert", "ca/ca.pem"), "[ca] cert"),
        ca_chain=_path(home, ca.get("chain")),
        token=token,
        server=server,
        database_url=url,
        crl=CrlConfig(
            validity_hours=int(crl.get("validity_hours", 24)),
            delta_validity_hours=int(crl.get("delta_validity_hours", 1)),
            full_interval_seconds=int(crl.get("full_interval_seconds", 3600)),
            max_publish_delay_seconds=int(crl.get("max_publish_delay_seconds", 60)),
            directory=_required_path(home, crl.get("directory", "crl"), "[crl] directory"),
        ),
        csr=CsrPolicy(
            max_bytes=int(csr.get("max_bytes", 4096)),
            duplicate_csr=csr.get("duplicate_csr", "return-existing"),
        ),
        lint_enabled=bool(lint.get("enabled", True)),
        lint_binary=lint.get("binary"),
        default_profile=default_profile,
        profiles=profiles,
        clock=_clock(raw.get("clock", {})),
        audit=_audit(home, raw.get("audit", {})),
        alerts=_alerts(home, raw.get("alerts", {})),
        device_reenrolment=_device_reenrolment(raw.get("issuance", {})),
        secure_until=secure_until,
        expiry=ExpiryConfig(warn_days=int(raw.get("expiry", {}).get("warn_days", 30))),
        **_generations(home, ca),
    )


def _generation(home: Path, table: dict[str, Any], where: str) -> CaGeneration:
    return CaGeneration(
        generation=int(_req(table, "generation", where)),
        key_label=str(_req(table, "key_label", where)),
        cert=_required_path(home, _req(table, "cert", where), f"{where} cert"),
        links=_path(home, table.get("links")),
    )


def _generations(home: Path, ca: dict[str, Any]) -> dict[str, Any]:
    """``[ca] generation``, ``[ca.next]`` and ``[[ca.retired]]``: every generation number and key label once."""
    active = int(ca.get("generation", 1))
    nxt = _generation(home, ca["next"], "[ca.next]") if "next" in ca else None
    retired = tuple(_generation(home, t, "[[ca.retired]]") for t in ca.get("retired", []))
    numbers = [active, *(g.generation for g in retired), *([nxt.generation] if nxt else [])]
    labels = [
        ca.get("key_label", "ckms-ca-key"),
        *(g.key_label for g in retired),
        *([nxt.key_label] if nxt else []),
    ]
    if len(set(numbers)) != len(numbers) or len(set(labels)) != len(labels):
        raise ConfigError("[ca]: each key generation and key label may appear once (active, next, retired)")
    if any(g.generation > active for g in retired) or (nxt is not None and nxt.generation <= active):
        raise ConfigError("[ca]: retired generations must be older than the active one, the next one newer")
    return {
        "ca_generation": active,
        "ca_links": _path(home, ca.get("links")),
        "ca_next": nxt,
        "ca_retired": retired,
    }


def _secure_until(table: dict[str, Any]) -> dict[str, dt.datetime]:
    """``[algorithms] secure_until = { "P-256" = 2040-12-31, ... }``: a curve's end of life (A.62).

    A date means the end of that day, UTC; a date-time needs its offset. Curves not named keep the
    CRYPTREC default, so a file names only what it changes (e.g. when CRYPTREC revises a date)."""
    given = table.get("secure_until", {})
    if not isinstance(given, dict):
        raise ConfigError("[algorithms] secure_until must be a table of curve = date")
    result = dict(DEFAULT_SECURE_UNTIL)
    for name, value in given.items():
        if name not in CURVES:
            raise ConfigError(
                f"[algorithms] secure_until: unknown curve {name!r}; known: {', '.join(CURVES)}"
            )
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise ConfigError(f"[algorithms] secure_until.{name}: a date-time needs its UTC offset")
            result[name] = value.astimezone(dt.UTC)
        elif isinstance(value, dt.date):
            result[name] = dt.datetime.combine(value, dt.time(23, 59, 59), dt.UTC)
        else:
            raise ConfigError(f"[algorithms] secure_until.{name}: expected a TOML date, not {value!r}")
    return result


def _device_reenrolment(issuance: dict[str, Any]) -> bool:
    """A TOML boolean only: the string "false" must not switch a security option on."""
    value = issuance.get("device_reenrolment", False)
    if not isinstance(value, bool):
        raise ConfigError(f"[issuance] device_reenrolment must be true or false, not {value!r}")
    return value


def _server_hardening(srv: dict[str, Any]) -> dict[str, Any]:
    """The [server] keys about TLS algorithms, timeouts and connection caps (all optional)."""
    try:
        return {
            "tls_groups": _names(srv.get("tls_groups", TLS_GROUPS), "[server] tls_groups"),
            "tls_ciphersuites": _names(
                srv.get("tls_ciphersuites", TLS_CIPHERSUITES), "[server] tls_ciphersuites"
            ),
            "header_timeout_seconds": float(srv.get("header_timeout_seconds", 10.0)),
            "body_timeout_seconds": float(srv.get("body_timeout_seconds", 30.0)),
            "keepalive_timeout_seconds": float(srv.get("keepalive_timeout_seconds", 30.0)),
            "max_connections": int(srv.get("max_connections", 512)),
            "max_connections_per_client": int(srv.get("max_connections_per_client", 64)),
        }
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[server]: {exc}") from None


def _audit(home: Path, table: dict[str, Any]) -> AuditConfig:
    try:
        return AuditConfig(
            key_label=str(table.get("key_label", AUDIT_KEY_LABEL)),
            seal_every_records=int(table.get("seal_every_records", 1000)),
            seal_interval_seconds=float(table.get("seal_interval_seconds", 60.0)),
            seal_log=_required_path(
                home, str(table.get("seal_log", "log/audit-seals.jsonl")), "[audit] seal_log"
            ),
            seal_syslog=bool(table.get("seal_syslog", True)),
            seal_slack_seconds=float(table.get("seal_slack_seconds", 300.0)),
            refusal_summary_seconds=float(table.get("refusal_summary_seconds", 60.0)),
            refusal_summary_max_entries=int(table.get("refusal_summary_max_entries", 50)),
            refusal_records_per_interval=int(table.get("refusal_records_per_interval", 20)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[audit]: {exc}") from None


def _alerts(home: Path, table: dict[str, Any]) -> AlertConfig:
    command = table.get("command", ())
    if isinstance(command, str):
        command = (command,)
    webhook = table.get("webhook") or None
    # Only a web URL: urllib would also open file: or ftp: URLs, and an alert must not read local files.
    if webhook is not None and urllib.parse.urlsplit(str(webhook)).scheme not in ("https", "http"):
        raise ConfigError(f"[alerts] webhook must be an https:// (or http://) URL, not {str(webhook)!r}")
    try:
        return AlertConfig(
            syslog=bool(table.get("syslog", True)),
            syslog_address=str(table.get("syslog_address", "/dev/log")),
            command=tuple(str(c) for c in command),
            webhook=webhook,
            timeout_seconds=float(table.get("timeout_seconds", 10.0)),
            fallback_file=home / "log" / "alerts.log",
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[alerts]: {exc}") from None


def _clock(table: dict[str, Any]) -> ClockConfig:
    # No [clock] table (a home from before the gate existed): gate off, as before. ``ca init`` always
    # writes the table explicitly.
    try:
        return ClockConfig(
            source=str(table.get("source", "none")),
            max_offset_seconds=float(table.get("max_offset_seconds", 10)),
            cache_seconds=float(table.get("cache_seconds", 1.0)),
            chronyc=str(table.get("chronyc", "chronyc")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[clock]: {exc}") from None
