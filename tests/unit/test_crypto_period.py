"""Crypto-periods (issue 14 parts 4 and 7; A.59, A.62): configurable end of life per curve, profiles
whose validity must fit before the CA's expiry and the algorithms' end of life, warnings that say
from when a profile's requests are refused, and validity defaults that fit the CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.algorithms import CURVES
from ckms_app.authority.ceremony import InitOptions, default_config, fitting_validity
from ckms_app.config import load_config
from ckms_app.errors import ConfigError, CsrRejected
from ckms_app.x509.profiles import (
    EndEntityTemplate,
    ca_outlives_algorithm,
    validity_limits,
    validity_problems,
)

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _home(tmp_path: Path, ca_days: int = 3650, **tables: object) -> Path:
    raw = default_config(
        tmp_path, InitOptions(clock_source="none", ca_validity_days=ca_days), "secrets/token-pin", None
    )
    raw.update(tables)
    (tmp_path / "ckms.toml").write_text(tomli_w.dumps(raw))
    return tmp_path


def _ca(
    curve: ec.EllipticCurve, not_after: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def test_curve_end_of_life_defaults_to_cryptrec_and_is_configurable(tmp_path: Path) -> None:
    config = load_config(_home(tmp_path, algorithms={"secure_until": {"P-256": dt.date(2035, 3, 31)}}))
    assert config.secure_until["P-256"] == dt.datetime(2035, 3, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert config.secure_until["P-384"] == CURVES["P-384"].secure_until  # not named: the default
    assert all(p.secure_until == config.secure_until for p in config.profiles.values())
    assert load_config(_home(tmp_path)).secure_until["P-256"].year == 2040


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"P-521": dt.date(2030, 1, 1)}, "unknown curve 'P-521'"),
        ({"P-256": "2030-01-01"}, "expected a TOML date"),
        ({"P-256": dt.datetime(2030, 1, 1)}, "needs its UTC offset"),  # noqa: DTZ001 - the point
        ("2030", "must be a table"),
    ],
)
def test_a_bad_end_of_life_is_a_clear_config_error(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_home(tmp_path, algorithms={"secure_until": value}))


def test_profile_defaults_fit_the_ca_devices_long_people_short(tmp_path: Path) -> None:
    config = load_config(_home(tmp_path, ca_days=7300))
    assert config.profiles["device"].validity_days == 3650  # a product's life
    assert config.profiles["identity"].validity_days == 365  # an operator: a year
    assert config.profiles["tls-server"].validity_days == 365
    short = load_config(_home(tmp_path, ca_days=3650))
    assert short.profiles["device"].validity_days == 1825  # never more than half the CA's life
    assert fitting_validity(365, 100) == 50 and fitting_validity(365, 1) == 1


def test_limit_is_the_earliest_of_ca_expiry_and_both_curves() -> None:
    _, ca = _ca(ec.SECP384R1(), dt.datetime(2045, 1, 1, tzinfo=dt.UTC))
    limits = validity_limits(ca, dict((n, c.secure_until) for n, c in CURVES.items()))
    assert limits["P-256"].not_after == CURVES["P-256"].secure_until
    assert limits["P-256"].code == "validity_beyond_algorithm"
    assert (
        limits["P-384"].not_after == ca.not_valid_after_utc and limits["P-384"].code == "validity_beyond_ca"
    )
    _, p256_ca = _ca(ec.SECP256R1(), dt.datetime(2050, 1, 1, tzinfo=dt.UTC))  # an imported, too-long CA
    assert validity_limits(p256_ca)["P-384"].reason.startswith("the end of life of the CA's P-256 signature")


def test_template_refuses_instead_of_shortening(tmp_path: Path) -> None:
    config = load_config(_home(tmp_path, ca_days=7300))
    ca_key, ca = _ca(ec.SECP384R1(), NOW + dt.timedelta(days=3000))
    template = EndEntityTemplate(
        profile=config.profiles["device"], issuer=ca, crl_url="http://c/f", delta_crl_url="http://c/d"
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")])
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(
        CsrRejected, match=r"3650 days of validity.*beyond the CA certificate's expiry"
    ) as exc:
        template.builder(subject=subject, sans=(), public_key=key, serial=1, now=NOW)
    assert exc.value.code == "validity_beyond_ca"
    fits = template.builder(
        subject=subject, sans=(), public_key=key, serial=2, now=NOW - dt.timedelta(days=700)
    )
    cert = fits.sign(ca_key, hashes.SHA384())
    assert cert.not_valid_after_utc == NOW - dt.timedelta(days=700) + dt.timedelta(days=3650)


def test_warnings_say_when_a_profile_stops_fitting(tmp_path: Path) -> None:
    config = load_config(_home(tmp_path, ca_days=7300))
    device = config.profiles["device"]  # 3650 days
    _, ca = _ca(ec.SECP384R1(), NOW + dt.timedelta(days=3650 + 30))
    soon = validity_problems([device], ca, NOW)
    assert any("requests are refused from" in w and "CA certificate" in w for w in soon), soon
    _, ca = _ca(ec.SECP384R1(), NOW + dt.timedelta(days=1000))
    now_refused = validity_problems([device], ca, NOW)
    assert any("every such request is REFUSED" in w for w in now_refused), now_refused
    _, ca = _ca(ec.SECP384R1(), NOW + dt.timedelta(days=7300))
    p384_only = [p for p in validity_problems([device], ca, NOW) if "P-384" in p]
    assert not p384_only  # P-256 keys may still be warned about (2040); P-384 fits for years


def test_ca_outliving_its_algorithm_is_named() -> None:
    _, ca = _ca(ec.SECP256R1(), dt.datetime(2042, 1, 1, tzinfo=dt.UTC))
    ends = {n: c.secure_until for n, c in CURVES.items()}
    warning = ca_outlives_algorithm(ca, ends)
    assert warning is not None and "2040-12-31" in warning and "rollover" in warning
    _, ok = _ca(ec.SECP256R1(), dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
    assert ca_outlives_algorithm(ok, ends) is None
