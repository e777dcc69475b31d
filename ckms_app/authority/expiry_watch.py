"""Expiry monitoring (issue 14 part 5; A.59, A.62): what expires soon, said before it lapses.

A CA whose own certificate, TLS certificate or an operator's certificate lapses unnoticed stops
working on that day: devices stop verifying, the terminal cannot connect, a person cannot act. So
``ckms expiry check`` (daily, from a systemd timer on the CA host) looks at

* the CA certificate and the daemon's TLS certificate (the files the daemon serves),
* every active person's current certificate (``entities.cert_serial``), one by one,
* device certificates (valid, unrevoked) expiring in the window: a count, the earliest and the count
  per profile only; a factory's millions of devices are a summary, not a list,
* and the crypto-periods (:func:`crypto_period_warnings`, also printed by ``ckms ca init``): a profile whose
  validity no longer fits before the CA's expiry or an algorithm's end of life refuses its requests.

When anything is due it sends one alert through the CA's alert channel (:mod:`ckms_app.audit.alerts`),
and every run writes one audit record (``expiry.check``). Reading is all it does with the database and
the certificates; it needs neither the token nor the daemon.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ckms_app.audit.alerts import Delivery, send_alert
from ckms_app.audit.record import named, record_now
from ckms_app.authority.ca_bundle import load_certificate
from ckms_app.config import Config
from ckms_app.errors import ConfigError
from ckms_app.store.engine import open_engine
from ckms_app.store.schema import certificates, entities
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.profiles import ca_outlives_algorithm, validity_problems

ACTION = "expiry.check"
WATCHER = named("ckms-expiry", "system")  # who the audit trail names: the CA host's daily check


@dataclass(frozen=True)
class Expiring:
    """One certificate watched by name."""

    kind: str  # ca | tls-server | person
    name: str  # the CA's subject, the TLS host, the person's entity ID
    serial: str
    not_after: str  # ISO 8601, UTC
    days_left: float  # negative: already expired
    due: bool  # expires within the window (or has expired)


@dataclass(frozen=True)
class DeviceSummary:
    """Valid device certificates whose notAfter falls inside the window."""

    expiring: int
    earliest: str | None
    by_profile: dict[str, int]


@dataclass(frozen=True)
class ExpiryReport:
    checked_at: str
    window_days: int
    certificates: list[Expiring]
    devices: DeviceSummary
    crypto_periods: list[str] = field(default_factory=list)

    @property
    def due(self) -> list[str]:
        """One line per thing that needs a person's attention; empty when nothing is due."""
        lines = [
            f"{c.kind} {c.name} (serial {c.serial}) "
            + (
                f"EXPIRED {-c.days_left:.0f} days ago"
                if c.days_left < 0
                else f"expires in {c.days_left:.1f} days"
            )
            + f" ({c.not_after})"
            for c in self.certificates
            if c.due
        ]
        if self.devices.expiring:
            lines.append(
                f"{self.devices.expiring} device certificates expire within {self.window_days} days "
                f"(earliest {self.devices.earliest})"
            )
        return lines + self.crypto_periods

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"due": self.due}


def check_expiry(config: Config, now: dt.datetime, window_days: int | None = None) -> ExpiryReport:
    """The report for ``now``; ``window_days`` defaults to ``[expiry] warn_days``."""
    days = config.expiry.warn_days if window_days is None else window_days
    if not 0 <= days <= 3650:
        raise ConfigError(f"--days must be between 0 and 3650, not {days}")
    horizon = now + dt.timedelta(days=days)
    ca_cert = load_certificate(config.ca_cert, "CA certificate")
    watched = [
        _watch("ca", ca_cert.subject.rfc4514_string(), ca_cert, now, horizon),
        _watch(
            "tls-server",
            config.server.public_host,
            load_certificate(config.server.tls_cert, "TLS certificate"),
            now,
            horizon,
        ),
    ]
    engine = open_engine(config.database_url)
    try:
        with engine.connect() as conn:
            watched += _people(conn, now, horizon)
            devices = _devices(conn, now, horizon)
    finally:
        engine.dispose()
    return ExpiryReport(
        checked_at=now.isoformat(),
        window_days=days,
        certificates=watched,
        devices=devices,
        crypto_periods=crypto_period_warnings(config, ca_cert, now),
    )


def crypto_period_warnings(config: Config, ca_cert: x509.Certificate, now: dt.datetime) -> list[str]:
    """What the crypto-periods (A.59, A.62) say about this CA now: it outlives its algorithm, or a
    profile's validity no longer fits (its requests are refused) or stops fitting within 90 days."""
    outlives = ca_outlives_algorithm(ca_cert, config.secure_until)
    return ([outlives] if outlives else []) + validity_problems(list(config.profiles.values()), ca_cert, now)


def alert_and_record(config: Config, report: ExpiryReport) -> list[Delivery]:
    """One alert when something is due (none otherwise), then the audit record of the run."""
    due = report.due
    deliveries: list[Delivery] = []
    if due:
        deliveries = send_alert(
            config.alerts,
            {"action": ACTION, "outcome": "due", "window_days": report.window_days, "due": due},
        )
    detail = {
        "due": len(due),
        "lines": due[:50],
        "alerted": [d.channel for d in deliveries if d.ok],
        "devices_expiring": report.devices.expiring,
    }
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        record_now(writer, WATCHER, ACTION, f"window:{report.window_days}d", "success", detail)
    finally:
        writer.close()
    return deliveries


def _watch(kind: str, name: str, cert: x509.Certificate, now: dt.datetime, horizon: dt.datetime) -> Expiring:
    return _entry(kind, name, format(cert.serial_number, "x"), cert.not_valid_after_utc, now, horizon)


def _entry(
    kind: str, name: str, serial: str, not_after: dt.datetime, now: dt.datetime, horizon: dt.datetime
) -> Expiring:
    left = (not_after - now).total_seconds() / 86400
    return Expiring(kind, name, serial, not_after.isoformat(), round(left, 2), not_after <= horizon)


def _people(conn: Connection, now: dt.datetime, horizon: dt.datetime) -> list[Expiring]:
    """Every active person's current certificate (the one their entity names), by entity ID."""
    rows = conn.execute(
        select(entities.c.entity_id, certificates.c.serial, certificates.c.not_after)
        .join(certificates, certificates.c.serial == entities.c.cert_serial)
        .where(entities.c.status == "active", certificates.c.status == "valid")
        .order_by(certificates.c.not_after)
    ).all()
    return [_entry("person", str(r.entity_id), str(r.serial), r.not_after, now, horizon) for r in rows]


def _devices(conn: Connection, now: dt.datetime, horizon: dt.datetime) -> DeviceSummary:
    window = (
        certificates.c.kind == "end-entity",
        certificates.c.status == "valid",
        certificates.c.not_after > now,
        certificates.c.not_after <= horizon,
    )
    rows = conn.execute(
        select(certificates.c.profile, func.count(), func.min(certificates.c.not_after))
        .where(*window)
        .group_by(certificates.c.profile)
    ).all()
    by_profile = {str(r[0]): int(r[1]) for r in rows}
    earliest = min((r[2] for r in rows), default=None)
    return DeviceSummary(
        expiring=sum(by_profile.values()),
        earliest=earliest.isoformat() if earliest is not None else None,
        by_profile=by_profile,
    )
