"""The HSM's raw ECDSA signature (r || s) becomes the DER ECDSA-Sig-Value X.509 carries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pkcs11.util.ec import encode_ecdsa_signature

from ckms_app.hsm.token import der_ecdsa_signature


@given(st.sampled_from([32, 48, 66]).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)))
def test_same_der_as_python_pkcs11s_encoder(raw: bytes) -> None:
    """Leading zero bytes, high bits set (a 0x00 pad in DER), all sizes of P-256, P-384, P-521."""
    assert der_ecdsa_signature(raw) == encode_ecdsa_signature(raw)
