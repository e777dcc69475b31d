"""docs/security-policy.md and .ja.md (A.01, A.03, A.04, A.57) are current, and drift() finds a deployed
ckms.toml or CA certificate that no longer matches the policy values they state.

The ckms.toml under test is the one ``ckms ca init`` writes (ckms_app's own writer, ``default_config``)
with the ckms_ca role's arguments, not one built by the module under test. Pure data: no token, no lab.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.authority.ceremony import InitOptions, default_config
from hardening import security_policy as sp

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "roles" / "ckms_ca" / "defaults" / "main.yml").read_text())


def init_toml(**changes: Any) -> dict[str, Any]:
    """ckms.toml as `ckms ca init` writes it with the role's arguments (no policy OID: a random 2.999 arc)."""
    args: dict[str, Any] = {
        "curve": DEFAULTS["ckms_ca_curve"],
        "ca_name": DEFAULTS["ckms_ca_name"],
        "ca_validity_days": DEFAULTS["ckms_ca_validity_days"],
        "clock_source": DEFAULTS["ckms_ca_clock_source"],
    }
    opts = InitOptions(**{**args, **changes})
    return default_config(Path("/var/lib/ckms"), opts, "secrets/token-pin", "hsm/softhsm2.conf")


def dumps(raw: dict[str, Any]) -> str:
    return tomli_w.dumps(raw)


def ca_cert(days: int = DEFAULTS["ckms_ca_validity_days"], curve: ec.EllipticCurve | None = None) -> bytes:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULTS["ckms_ca_name"])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # as ckms_app.x509.profiles.ca_builder
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def document() -> str:
    return sp.DOC_EN.read_text("utf-8")


# --- the committed documents ------------------------------------------------------------------------


def test_committed_documents_are_current():
    assert sp.stale() == [], "run: python -m hardening.security_policy --write"
    assert sp.main(["--check"]) == 0


def test_stale_names_an_edited_document(tmp_path):
    edited = tmp_path / "security-policy.md"
    edited.write_text(sp.DOC_EN.read_text("utf-8").replace("validity_hours: 24", "validity_hours: 48"))
    found = sp.stale({"en": edited})
    assert len(found) == 1 and found[0].endswith(": differs from a fresh generation"), found
    # the path is shown relative to the repository when it lies inside it (a --basetemp in the tree)
    shown = found[0].removesuffix(": differs from a fresh generation")
    assert (sp.REPO / shown).resolve() == edited.resolve()


def test_both_languages_state_the_same_values(document):
    assert sp.document_values(document) == sp.document_values(sp.DOC_JA.read_text("utf-8"))


def test_document_states_the_role_defaults(document):
    stated = sp.document_values(document)
    assert stated["ca"]["curve"] == DEFAULTS["ckms_ca_curve"]
    assert stated["ca"]["validity_days"] == DEFAULTS["ckms_ca_validity_days"]
    assert stated["ca"]["policy_oid"] == sp.GENERATED_OID  # the role sets no ckms_ca_policy_oid
    assert stated["server"]["tls_groups"] == DEFAULTS["ckms_ca_tls_groups"]
    assert stated["server"]["tls_ciphersuites"] == DEFAULTS["ckms_ca_tls_ciphersuites"]
    for item in ("A.01", "A.03", "A.04", "A.57"):
        assert f"| {item} |" in document


# --- drift ------------------------------------------------------------------------------------------


def test_unchanged_deployment_has_no_drift(document):
    assert sp.drift(dumps(init_toml()), document) == []
    assert sp.drift(dumps(init_toml()), document, ca_cert()) == []


def test_role_merge_is_no_drift(document):
    raw, _ = sp.deployed_toml()
    raw = copy.deepcopy(raw)
    for profile in raw["profiles"].values():
        profile["policy_oid"] = "2.999.123.456.1"
    assert sp.drift(dumps(raw), document) == []


def _names(diffs: list[str]) -> set[str]:
    return {d.split(":", 1)[0] for d in diffs}


@pytest.mark.parametrize(
    ("table", "key", "value", "named"),
    [
        ("crl", "validity_hours", 48, "crl.validity_hours"),
        ("crl", "full_interval_seconds", 86400, "crl.full_interval_seconds"),
        ("crl", "max_publish_delay_seconds", 7200, "crl.max_publish_delay_seconds"),
        ("server", "tls_groups", "P-256:X25519", "server.tls_groups"),
        ("server", "tls_ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "server.tls_ciphersuites"),
        ("lint", "enabled", False, "lint.enabled"),
        ("clock", "source", "none", "clock.source"),
        ("ca", "curve", "P-384", "ca.curve"),
    ],
)
def test_a_changed_value_is_drift_naming_the_key(document, table, key, value, named):
    raw = init_toml()
    raw[table][key] = value
    diffs = sp.drift(dumps(raw), document)
    assert _names(diffs) == {named}, diffs


def test_a_changed_policy_oid_is_drift(document):
    raw = init_toml(policy_oid="1.3.6.1.4.1.99999.1.1")  # not the generated arc the document states
    assert _names(sp.drift(dumps(raw), document)) == {"ca.policy_oid"}
    raw = init_toml()
    raw["profiles"]["device"]["policy_oid"] = "2.999.1.2.1"  # profiles no longer share one OID
    assert _names(sp.drift(dumps(raw), document)) == {"ca.policy_oid"}


def test_profile_changes_are_drift(document):
    raw = init_toml()
    raw["profiles"]["device"]["validity_days"] = 3650
    raw["profiles"]["extra"] = copy.deepcopy(raw["profiles"]["identity"])
    names = _names(sp.drift(dumps(raw), document))
    assert "profiles.device.validity_days" in names
    assert {n for n in names if n.startswith("profiles.extra.")}, names


def test_ca_certificate_validity_and_key_are_compared(document):
    toml = dumps(init_toml())
    assert _names(sp.drift(toml, document, ca_cert(days=365))) == {"ca.validity_days"}
    assert _names(sp.drift(toml, document, ca_cert(curve=ec.SECP384R1()))) == {"ca.key_curve"}


def test_unreadable_toml_is_drift(document):
    assert sp.drift("[ca\n", document)
    raw = init_toml()
    del raw["profiles"]["device"]["policy_oid"]
    assert sp.drift(dumps(raw), document)


def test_a_document_without_values_is_an_error():
    with pytest.raises(sp.PolicyError):
        sp.drift(dumps(init_toml()), "# a policy with no values\n")


# --- another inventory ------------------------------------------------------------------------------


def test_inventory_override_makes_its_own_policy():
    docs = sp.generate(REPO / "inventories" / "production.example")
    stated = sp.document_values(docs["en"])
    assert stated["ca"]["curve"] == "P-384"
    assert stated["ca"]["policy_oid"] == "1.3.6.1.4.1.99999.1.1"
    site = init_toml(curve="P-384", ca_name=stated["ca"]["name"], policy_oid="1.3.6.1.4.1.99999.1.1")
    assert sp.drift(dumps(site), docs["en"]) == []
    # the committed (role-default) document does not describe that site
    assert {"ca.curve", "ca.name", "ca.policy_oid"} <= _names(sp.drift(dumps(site), sp.DOC_EN.read_text()))


def test_templated_inventory_value_is_refused(tmp_path):
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "group_vars" / "all" / "main.yml").write_text('ckms_ca_curve: "{{ site_curve }}"\n')
    with pytest.raises(sp.PolicyError):
        sp.generate(tmp_path)


# --- for the report ---------------------------------------------------------------------------------


def test_report_section_carries_the_recorded_drift():
    records = [
        {
            "check": sp.CHECK_ID,
            "host": "ca1",
            "outcome": "failed",
            "evidence": [
                {"label": "drift", "value": '["crl.validity_hours: the document states 24, deployed 48"]'}
            ],
        },
        {
            "check": "check:A.05.policy_oid_in_issued_certs",
            "host": "ca1",
            "outcome": "passed",
            "evidence": [],
        },
    ]
    section = sp.report_section(records)
    assert section["current"] and section["values"]["ca"]["curve"] == DEFAULTS["ckms_ca_curve"]
    assert section["hosts"] == [
        {
            "host": "ca1",
            "outcome": "failed",
            "drift": ["crl.validity_hours: the document states 24, deployed 48"],
        }
    ]
    assert any("crl.validity_hours" in line for line in sp.report_markdown(section, "ja"))


def test_lab_inventory_overrides_no_policy_value():
    """The committed policy says the lab deploys the role defaults: the lab's generated inventory
    (scripts/lab-converge.sh) sets no policy variable except the clock gate, and that to the default
    (``none`` only when the perimeter plays are skipped, which the check then reports as drift)."""
    script = (REPO / "scripts" / "lab-converge.sh").read_text()
    named = {v for v in sp.POLICY_VARS if f"{v}:" in script}
    assert named <= {"ckms_ca_clock_source"}, named
    assert DEFAULTS["ckms_ca_clock_source"] == "chrony"
    generated = REPO / "inventories" / "lab" / "generated"
    if (generated / "hosts.yml").exists():
        lab = sp.document_values(sp.generate(generated)["en"])
        assert lab == sp.document_values(sp.DOC_EN.read_text())
