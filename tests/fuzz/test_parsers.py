"""Property tests over the parsers a hostile client reaches: the CSR checks, EST body decoding, JSON bodies
and the ckms.toml loader. Each must answer with its own refusal (a 4xx on the wire) or a result; any
other exception is a crash (a 500 on the wire) and fails the test with the example that caused it.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from ckms_app.authority.ceremony import InitOptions, default_config
from ckms_app.config import CONFIG_NAME, Config, Profile, load_config, parse_config
from ckms_app.daemon.bodies import MAX_JSON_DEPTH, decode_est_base64, decode_json_object, json_depth
from ckms_app.errors import BadRequest, ConfigError, CsrRejected
from ckms_app.x509.csr_policy import CheckedCsr, check_csr

from . import hostile_csr
from .profiles import examples
from .strategies import SEEDS, csr_ders, json_bodies, nested, toml_values

DEVICE = Profile(
    name="device",
    validity_days=365,
    key_usage=("digital_signature",),
    extended_key_usage=("client_auth",),
    policy_oid="2.999.1.1",
    subject_cn_pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    allowed_subject_attributes=("CN", "O", "OU", "serialNumber"),
    san_required=False,
    san_dns_pattern=r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    san_uri_pattern=r"urn:ckms:device:[A-Za-z0-9._-]{1,64}",
    allowed_curves=("P-256", "P-384"),
)


# --- the named hostile inputs: each gets its own code ------------------------------------------------


@pytest.mark.parametrize("name", sorted(hostile_csr.HOSTILE))
def test_each_hostile_request_is_refused_with_its_code(name: str) -> None:
    maker, code = hostile_csr.HOSTILE[name]
    with pytest.raises(CsrRejected) as refused:
        check_csr(maker(), DEVICE, 4096)
    assert refused.value.code == code and refused.value.http_status == 400
    assert len(str(refused.value)) > 20  # a sentence the requester can act on


def test_the_seed_requests_pass_so_the_mutations_start_from_valid_input() -> None:
    assert isinstance(check_csr(SEEDS[0], DEVICE, 4096), CheckedCsr)
    assert isinstance(check_csr(SEEDS[1], DEVICE, 4096), CheckedCsr)


# --- CSR checks -----------------------------------------------------------------------------------------


@examples(300)
@given(csr_ders)
def test_check_csr_only_ever_refuses_with_csr_rejected(der: bytes) -> None:
    try:
        checked = check_csr(der, DEVICE, 4096)
    except CsrRejected as exc:
        assert exc.http_status == 400 and exc.code.startswith("csr_") and str(exc)
        return
    # Whatever passes is what the profile allows: an EC key on an allowed curve, one CN, allowed SANs.
    assert checked.curve.name in DEVICE.allowed_curves
    assert checked.common_name


# --- EST bodies -----------------------------------------------------------------------------------------


@examples(200)
@given(st.one_of(st.binary(max_size=300), st.builds(base64.encodebytes, st.binary(max_size=200))))
def test_est_base64_decoding_only_refuses_with_csr_rejected(raw: bytes) -> None:
    try:
        decoded = decode_est_base64(raw)
    except CsrRejected as exc:
        assert exc.code == "csr_malformed"
        return
    assert isinstance(decoded, bytes)


@examples(100)
@given(st.binary(min_size=1, max_size=200), st.integers(1, 76))
def test_est_base64_with_any_line_breaks_decodes_to_the_same_request(der: bytes, width: int) -> None:
    text = base64.b64encode(der)
    wrapped = b"\r\n".join(text[i : i + width] for i in range(0, len(text), width))
    assert decode_est_base64(wrapped + b"\n") == der


# --- JSON bodies ----------------------------------------------------------------------------------------


@examples(300)
@given(json_bodies)
def test_json_bodies_only_refuse_with_bad_request(raw: bytes) -> None:
    try:
        body = decode_json_object(raw)
    except BadRequest as exc:
        assert exc.http_status == 400 and exc.code == "bad_json"
        return
    assert isinstance(body, dict)
    assert json_depth(raw) <= MAX_JSON_DEPTH


def test_deeply_nested_json_is_refused_before_decoding() -> None:
    for opener in "[{":
        with pytest.raises(BadRequest, match="nested 100000 levels"):
            decode_json_object(nested(100_000, opener))
    assert decode_json_object(b'{"serial": "1f", "x": [[["]]]]]"]]]}') == {"serial": "1f", "x": [[["]]]]]"]]]}


# --- the ckms.toml loader -------------------------------------------------------------------------------

HOME = Path("/nonexistent/ckms-home")
BASE: dict[str, Any] = default_config(HOME, InitOptions(policy_oid="2.999.1.1"), "secrets/pin", None)


@st.composite
def perturbed_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The ceremony's own ckms.toml with tables and keys replaced, dropped or added."""
    raw: dict[str, Any] = {
        table: dict(values) if isinstance(values, dict) else values for table, values in BASE.items()
    }
    for _ in range(draw(st.integers(1, 4))):
        table = draw(
            st.sampled_from(sorted(raw) + ["profiles", "issuance", "audit", "alerts", "clock", "new"])
        )
        op = draw(st.sampled_from(["replace-key", "drop-key", "replace-table", "drop-table"]))
        current = raw.get(table)
        if op == "drop-table":
            raw.pop(table, None)
        elif op == "replace-table" or not isinstance(current, dict):
            raw[table] = draw(toml_values)
        else:
            keys = sorted(current) + ["extra", "device_reenrolment", "max_bytes", "workers"]
            key = draw(st.sampled_from(keys))
            if op == "drop-key":
                current.pop(key, None)
            else:
                current[key] = draw(toml_values)
    return raw


@examples(300)
@given(perturbed_configs())
def test_config_parser_only_refuses_with_config_error(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(HOME, raw)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)
    assert isinstance(config.device_reenrolment, bool)


@examples(150)
@given(
    st.one_of(
        st.binary(max_size=300), st.builds(lambda raw: tomli_w.dumps(raw).encode(), perturbed_configs())
    )
)
def test_config_file_loader_only_refuses_with_config_error(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / CONFIG_NAME).write_bytes(text)
        try:
            load_config(home)
        except ConfigError as exc:
            assert str(exc)


def test_device_reenrolment_is_off_unless_a_toml_true() -> None:
    assert parse_config(HOME, BASE).device_reenrolment is False
    on = {**BASE, "issuance": {**BASE["issuance"], "device_reenrolment": True}}
    assert parse_config(HOME, on).device_reenrolment is True
    with pytest.raises(ConfigError, match="device_reenrolment must be true or false"):
        parse_config(HOME, {**BASE, "issuance": {**BASE["issuance"], "device_reenrolment": "false"}})
