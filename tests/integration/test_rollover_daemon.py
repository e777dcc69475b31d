"""A daemon that holds two generations of the CA key (issue 14 part 3, docs/ca-key-rollover.md).

The CA home is rolled over by hand here (a second key in the token, its CA certificate, the links, the
``[ca]`` tables), so that these tests prove the daemon's side alone: the rollover commands have their own
tests. After the rollover the daemon issues under the new key, names the new key's CRL address in what it
issues, signs one CRL per key (each listing only its own certificates), serves every generation and both
links from ``/cacerts``, and still accepts people whose certificates the old key issued.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ckms_app.algorithms import CURVES
from ckms_app.authority import selftest
from ckms_app.authority.signer import open_signer
from ckms_app.config import load_config
from ckms_app.hsm.token import Token
from ckms_app.x509.key_ids import issuer_key_id, subject_key_id
from ckms_app.x509.profiles import ca_builder, link_builder
from tests.integration.conftest import CaHome, Daemon, ckms, curl_enroll, init_home, make_csr, split_status

_PEM = serialization.Encoding.PEM
REPO = Path(__file__).resolve().parents[2]


def _enrol(ca: CaHome, tmp: Path, cn: str) -> x509.Certificate:
    csr, _ = make_csr(cn)
    body, code = split_status(curl_enroll(ca, csr, tmp).stdout)
    assert code == 200, body
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]


def _bundle(rolled: dict) -> str:
    """Every generation's CA certificate in one file, as the terminal's ca.pem holds them after a rollover."""
    path = Path(rolled["tmp"]) / "bundle.pem"
    config = rolled["config"]
    path.write_bytes(config.ca_cert.read_bytes() + config.ca_retired[0].cert.read_bytes())
    return str(path)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the test's own daemon
        return bytes(resp.read())


async def _second_generation(home: Path) -> None:
    """What ``ckms ca rollover begin`` + ``activate`` leave behind, made directly."""
    config = load_config(home)
    old_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    policy = config.profile(None).policy_oid
    now = dt.datetime.now(dt.UTC)
    with Token(config.token) as token:
        old_key = token.load_ec_key(config.ca_key_label)
        new_key = token.generate_ec_key("ckms-ca-key-g2", CURVES["P-384"])  # and a stronger curve (A.59)
        async with open_signer(config, new_key) as new_signer:
            new_cert, _ = await new_signer.certificate(
                ca_builder(
                    subject=old_cert.subject,
                    public_key=new_key.public_key(),
                    now=now,
                    validity_days=3650,
                    policy_oid=policy,
                ),
                "CA certificate",
            )
            old_with_new, _ = await new_signer.certificate(
                link_builder(subject=old_cert, issuer=new_cert, now=now, policy_oid=policy), "link"
            )
        async with open_signer(config, old_key) as old_signer:
            new_with_old, _ = await old_signer.certificate(
                link_builder(subject=new_cert, issuer=old_cert, now=now, policy_oid=policy), "link"
            )
        g2 = home / "ca" / "g2"
        g2.mkdir()
        (g2 / "ca.pem").write_bytes(new_cert.public_bytes(_PEM))
        (g2 / "links.pem").write_bytes(new_with_old.public_bytes(_PEM) + old_with_new.public_bytes(_PEM))
        raw = tomllib.loads((home / "ckms.toml").read_text())
        ca = raw["ca"]
        ca["retired"] = [{"generation": 1, "key_label": ca["key_label"], "cert": ca.get("cert", "ca/ca.pem")}]
        ca.update(generation=2, key_label="ckms-ca-key-g2", cert="ca/g2/ca.pem", links="ca/g2/links.pem")
        (home / "ckms.toml").write_text(tomli_w.dumps(raw))
        selftest.record_manifest(load_config(home), new_key, "test rollover")


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("rollover")
    ca = init_home(tmp / "home")
    daemon = Daemon(ca)
    daemon.start()
    try:
        old_device = _enrol(ca, tmp, "device-before-rollover")
    finally:
        daemon.stop()
    # In a process of its own: SoftHSM keeps the token directory of the first home a process opened.
    script = "import asyncio, pathlib, sys; from tests.integration.test_rollover_daemon import _second_generation; "
    script += "asyncio.run(_second_generation(pathlib.Path(sys.argv[1])))"
    subprocess.run([sys.executable, "-c", script, str(ca.home)], cwd=REPO, check=True, timeout=120)
    daemon.start()
    try:
        yield {"ca": ca, "tmp": tmp, "old_device": old_device, "config": load_config(ca.home)}
    finally:
        daemon.stop()


def test_new_issuance_is_under_the_new_key_and_names_its_crl(rolled: dict) -> None:
    ca, config = rolled["ca"], rolled["config"]
    old_ca = x509.load_pem_x509_certificate(config.ca_retired[0].cert.read_bytes())
    new_ca = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    device = _enrol(
        ca, rolled["tmp"], "device-after-rollover"
    )  # the operator's certificate is generation 1's
    device.verify_directly_issued_by(new_ca)
    assert issuer_key_id(device) == subject_key_id(new_ca) != issuer_key_id(rolled["old_device"])
    rolled["old_device"].verify_directly_issued_by(old_ca)
    cdp = device.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in cdp for n in p.full_name] == [config.server.crl_url("full", 2)]
    assert config.server.crl_url("full", 2).endswith("/crl/g2/full.crl")
    assert isinstance(device.signature_hash_algorithm, hashes.SHA384)  # the P-384 key signs with SHA-384
    rolled["new_device"] = device


def test_each_key_signs_a_crl_of_its_own_certificates(rolled: dict) -> None:
    ca, config = rolled["ca"], rolled["config"]
    old_ca = x509.load_pem_x509_certificate(config.ca_retired[0].cert.read_bytes())
    new_ca = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    new_device = rolled.get("new_device") or _enrol(ca, rolled["tmp"], "device-after-rollover-2")
    home = ["--home", str(ca.home)]
    for device in (rolled["old_device"], new_device):
        ckms(
            "revoke", "--yes", *home, "--serial", format(device.serial_number, "x"), "--reason", "superseded"
        )
    ckms("crl", "publish", *home)
    first = x509.load_der_x509_crl(_get(config.server.crl_url("full", 1)))
    second = x509.load_der_x509_crl(_get(config.server.crl_url("full", 2)))
    assert first.is_signature_valid(old_ca.public_key()) and not first.is_signature_valid(new_ca.public_key())
    assert second.is_signature_valid(new_ca.public_key())
    for crl, ca_cert in ((first, old_ca), (second, new_ca)):
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == bytes.fromhex(subject_key_id(ca_cert))
    old_serial, new_serial = rolled["old_device"].serial_number, new_device.serial_number
    assert first.get_revoked_certificate_by_serial_number(old_serial) is not None
    assert first.get_revoked_certificate_by_serial_number(new_serial) is None
    assert second.get_revoked_certificate_by_serial_number(new_serial) is not None
    assert second.get_revoked_certificate_by_serial_number(old_serial) is None
    numbers = {c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in (first, second)}
    assert len(numbers) == 2  # one number sequence for every key
    delta = x509.load_der_x509_crl(_get(config.server.crl_url("delta", 2)))
    assert delta.is_signature_valid(new_ca.public_key())
    freshest = second.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert [n.value for p in freshest for n in p.full_name] == [config.server.crl_url("delta", 2)]
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(config.server.crl_url("full", 3))
    assert missing.value.code == 404


def test_cacerts_serves_every_generation_and_both_links(rolled: dict) -> None:
    ca, config = rolled["ca"], rolled["config"]
    old_ca = x509.load_pem_x509_certificate(config.ca_retired[0].cert.read_bytes())
    new_ca = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    out = subprocess.run(
        ["curl", "-sS", "--cacert", _bundle(rolled), f"{ca.est_url}/cacerts"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(out))
    assert new_ca in certs and old_ca in certs  # a PKCS#7 SET OF: no order
    links = [c for c in certs if c not in (old_ca, new_ca)]
    assert len(links) == 2
    pairs = {(subject_key_id(c), issuer_key_id(c)) for c in links}
    assert pairs == {
        (subject_key_id(new_ca), subject_key_id(old_ca)),
        (subject_key_id(old_ca), subject_key_id(new_ca)),
    }


def test_health_and_self_tests_cover_both_keys(rolled: dict) -> None:
    ca = rolled["ca"]
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            _bundle(rolled),
            f"{ca.est_url.rsplit('/.well', 1)[0]}/health",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert b'"status": "ok"' in out or b'"status":"ok"' in out, out
    runs = ca.audit("selftest.run")
    assert runs and runs[-1][4] == "success", runs[-1:]  # the start after the rollover, both keys tested


def test_trust_lists_every_generation_and_each_signing_keys_crl(rolled: dict) -> None:
    config = rolled["config"]
    summary = json.loads(ckms("ca", "trust", "--json", "--home", str(rolled["ca"].home)).stdout)
    roles = {g["generation"]: g["role"] for g in summary["generations"]}
    assert roles == {2: "active", 1: "retired"}
    assert summary["crl_urls"] == [config.server.crl_url("full", 2), config.server.crl_url("full", 1)]
    bundle = x509.load_pem_x509_certificates(summary["bundle"].encode())
    assert [subject_key_id(c) for c in bundle] == [
        subject_key_id(x509.load_pem_x509_certificate(config.ca_cert.read_bytes())),
        subject_key_id(x509.load_pem_x509_certificate(config.ca_retired[0].cert.read_bytes())),
    ]
    plain = ckms("ca", "trust", "--home", str(rolled["ca"].home)).stdout
    assert plain == summary["bundle"]


def test_a_swapped_generation_certificate_fails_the_integrity_self_test(rolled: dict) -> None:
    """Every generation's CA certificate is a trust anchor: the signed manifest covers each, and its links."""
    ca, config = rolled["ca"], rolled["config"]
    assert ckms("selftest", "--home", str(ca.home), "--json").returncode == 0
    links = config.ca_links
    saved = links.read_bytes()
    links.write_bytes(saved + config.ca_retired[0].cert.read_bytes())  # one more anchor slipped in
    try:
        res = ckms("selftest", "--home", str(ca.home), "--json", check=False)
        assert res.returncode != 0 and "ca/generation-2/links.pem modified" in res.stdout, res.stdout
    finally:
        links.write_bytes(saved)
    assert ckms("selftest", "--home", str(ca.home), "--json").returncode == 0
