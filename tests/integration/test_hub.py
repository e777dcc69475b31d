"""The toy model's CRL path end to end (issue 14 part 1; A.37, A.46): CA → terminal's relay → IoT hub.

Real daemon, real ``ckms hub serve`` and ``ckms hub relay`` processes, real TLS: a device enrolled by the
terminal is let in by the hub; once revoked and relayed, the same device is refused at the handshake.
The hub takes no CRL it cannot verify: a forged one (another key), a replayed older one and a delta are
refused, and without any CRL it lets nobody in.

Several CAs (a CA key rollover), from throwaway keys, no daemon: two CAs of the same name, one CRL each,
devices told apart by key; a CA without a current CRL fails closed for its own devices only; the one-CA
``current.crl`` state is migrated; the relay carries one CRL per ``--crl-url``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import CKMS, CaHome, Daemon, ckms, curl_enroll, free_port, make_csr, split_status


class HubProcess:
    def __init__(self, state: Path, ca: CaHome | Path) -> None:
        """``ca``: the daemon's CA home, or a PEM file of one or several CA certificates."""
        ca_cert = ca if isinstance(ca, Path) else ca.ca_cert
        self.state, self.device_port, self.upload_port = state, free_port(), free_port()
        self.log = state / "hub.log"
        self.proc = subprocess.Popen(
            [
                *CKMS,
                "hub",
                "serve",
                "--state-dir",
                str(state),
                "--ca-cert",
                str(ca_cert),
                "--bind",
                "127.0.0.1",
                "--device-port",
                str(self.device_port),
                "--upload-port",
                str(self.upload_port),
            ],  # fmt: skip
            stderr=open(self.log, "w"),  # noqa: SIM115 - closed with the process
        )
        deadline = time.monotonic() + 20
        while '"hub.ready"' not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "hub not ready"
            time.sleep(0.05)

    @property
    def cert(self) -> Path:
        return self.state / "hub.crt"

    @property
    def upload_url(self) -> str:
        return f"https://127.0.0.1:{self.upload_port}"

    def events(self, name: str) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [e for e in lines if e["event"] == name]

    def status(self) -> dict:
        proc = subprocess.run(
            ["curl", "-sS", "--cacert", str(self.cert), "-k", f"{self.upload_url}/status"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        return json.loads(proc.stdout)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture()
def hub(tmp_path: Path, ca: CaHome, daemon: Daemon) -> Iterator[HubProcess]:
    state = tmp_path / "hub"
    ckms("hub", "init", "--state-dir", str(state), "--name", "hub.lab.test")
    proc = HubProcess(state, ca)
    yield proc
    proc.proc.terminate()
    proc.proc.wait(10)


def _write_device(
    tmp: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path, int]:
    """A device's certificate and key as PEM files (what ``ckms hub connect`` reads), and its serial."""
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert.serial_number


def _device(ca: CaHome, tmp: Path, name: str) -> tuple[Path, Path, int]:
    csr, key = make_csr(name)
    out = curl_enroll(ca, csr, tmp)
    body, code = split_status(out.stdout)
    assert code == 200, body
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    return _write_device(tmp, name, cert, key)


def _connect(hub: HubProcess, cert: Path, key: Path) -> dict:
    proc = ckms(
        "hub", "connect", "--hub", f"127.0.0.1:{hub.device_port}", "--hub-cert", str(hub.cert),
        "--cert", str(cert), "--key", str(key), check=False,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert (proc.returncode == 0) == (result["result"] == "accepted"), proc
    return result


def _relay(ca: CaHome, hub: HubProcess, tmp: Path) -> tuple[int, dict]:
    proc = ckms(
        "hub", "relay", "--once", "--json", "--crl-url", ca.crl_url, "--ca-cert", str(ca.ca_cert),
        "--hub-url", hub.upload_url, "--hub-cert", str(hub.cert), "--state-file", str(tmp / "relay.json"),
        check=False,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


def _upload(hub: HubProcess, der: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(hub.cert),
            "-k",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/pkix-crl",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
            f"{hub.upload_url}/crl",
        ],  # fmt: skip
        input=der,
        capture_output=True,
        timeout=30,
    )


def test_revoked_device_is_refused_at_the_hub_after_the_relay(
    ca: CaHome, hub: HubProcess, tmp_path: Path
) -> None:
    keep = _device(ca, tmp_path, "hub-device-keep")
    gone = _device(ca, tmp_path, "hub-device-gone")

    # No CRL yet: the hub lets nobody in (fail closed).
    assert _connect(hub, *keep[:2])["result"] == "refused"
    assert hub.events("device.refused")[-1]["reason"].startswith("no current CRL")

    ckms("crl", "publish", "--home", str(ca.home))
    rc, first = _relay(ca, hub, tmp_path)
    assert rc == 0 and first["uploaded"] and first["hub_after"] == first["fetched"], first
    assert _connect(hub, *keep[:2])["result"] == "accepted"
    assert _connect(hub, *gone[:2])["result"] == "accepted"

    ckms(
        "revoke",
        "--yes",
        "--home",
        str(ca.home),
        "--serial",
        format(gone[2], "x"),
        "--reason",
        "keyCompromise",
    )
    revoked_at = time.monotonic()
    ckms("crl", "publish", "--home", str(ca.home))
    rc, second = _relay(ca, hub, tmp_path)
    assert rc == 0 and second["uploaded"] and second["fetched"] > first["fetched"], second
    refused = _connect(hub, *gone[:2])
    elapsed = time.monotonic() - revoked_at
    assert refused["result"] == "refused", refused
    assert _connect(hub, *keep[:2])["result"] == "accepted"
    last = hub.events("device.refused")[-1]
    assert "revoked" in last["reason"] and last["crl"] == second["fetched"], last
    print(f"revocation → refused at the hub in {elapsed:.2f} s")

    # A second round with nothing new uploads nothing and still reports the hub current.
    rc, third = _relay(ca, hub, tmp_path)
    assert rc == 0 and not third["uploaded"] and third["hub_after"] == second["fetched"], third


def test_hub_refuses_crls_it_cannot_trust(ca: CaHome, hub: HubProcess, tmp_path: Path) -> None:
    ckms("crl", "publish", "--home", str(ca.home))
    older = (ca.home / "crl" / "full.crl").read_bytes()
    ckms("crl", "publish", "--home", str(ca.home))
    rc, result = _relay(ca, hub, tmp_path)
    assert rc == 0, result
    held = result["hub_after"]

    body, code = split_status(_upload(hub, older).stdout)
    assert code == 422 and b"older" in body, body  # replay of an older CRL

    body, code = split_status(_upload(hub, (ca.home / "crl" / "delta.crl").read_bytes()).stdout)
    assert code == 422 and b"delta" in body, body

    # Same issuer name, another key: a forgery.
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=1))
        .add_extension(x509.CRLNumber(held + 100), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    body, code = split_status(_upload(hub, forged.public_bytes(serialization.Encoding.DER)).stdout)
    assert code == 422 and b"signature" in body, body

    body, code = split_status(_upload(hub, b"not a crl").stdout)
    assert code == 422, body
    status = json.loads(
        subprocess.run(
            ["curl", "-sS", "--cacert", str(hub.cert), "-k", f"{hub.upload_url}/status"],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
    )
    assert status["crl_number"] == held and status["usable"], status
    assert len(hub.events("crl.rejected")) == 4


# ------------------------------------------------------------------ several CAs (after a CA key rollover)
# Two CAs with the SAME subject DN and different keys, made here from throwaway keys (the daemon has one
# CA): the old key keeps signing CRLs for its devices while the new key issues new ones. The hub must
# pick each device's CRL by key (AKI/SKI), both in OpenSSL's handshake and in its own second check.
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms rollover test CA")])


@dataclass
class ThrowawayCa:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls) -> ThrowawayCa:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(CA_NAME)
            .issuer_name(CA_NAME)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def key_id(self) -> str:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()

    def device(self, tmp: Path, name: str) -> tuple[Path, Path, int]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(CA_NAME)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _write_device(tmp, name, cert, key)

    def crl(self, number: int, *revoked: int, valid_s: float = 3600) -> bytes:
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(CA_NAME)
            .last_update(now - dt.timedelta(seconds=1))
            .next_update(now + dt.timedelta(seconds=valid_s))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _hub_of(tmp: Path, name: str, bundle: Path) -> HubProcess:
    state = tmp / name
    if not (state / "hub.crt").exists():
        ckms("hub", "init", "--state-dir", str(state), "--name", "hub.lab.test")
    return HubProcess(state, bundle)


def _accepted(hub: HubProcess, device: tuple[Path, Path, int]) -> bool:
    return _connect(hub, *device[:2])["result"] == "accepted"


def _last_refusal(hub: HubProcess) -> dict:
    return hub.events("device.refused")[-1]


def test_hub_trusts_two_same_name_cas_with_one_crl_each(tmp_path: Path) -> None:
    ca1, ca2 = ThrowawayCa.make(), ThrowawayCa.make()
    assert ca1.cert.subject == ca2.cert.subject and ca1.key_id != ca2.key_id
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (ca1, ca2)))
    d1, d1_gone = ca1.device(tmp_path, "ca1-keep"), ca1.device(tmp_path, "ca1-gone")
    d2, d2_gone = ca2.device(tmp_path, "ca2-keep"), ca2.device(tmp_path, "ca2-gone")
    hub = _hub_of(tmp_path, "hub", bundle)
    try:
        # Only CA1's CRL held: CA1's devices in (the revoked one out), CA2's refused (fail closed).
        body, code = split_status(_upload(hub, ca1.crl(5, d1_gone[2])).stdout)
        assert code == 201 and ca1.key_id.encode() in body, body
        assert _accepted(hub, d1)
        assert not _accepted(hub, d1_gone) and "revoked" in _last_refusal(hub)["reason"]
        for device in (d2, d2_gone):
            assert not _accepted(hub, device)
            assert _last_refusal(hub)["reason"].startswith("no current CRL for the device's CA"), (
                _last_refusal(hub)
            )
        status = hub.status()
        assert status["crl_number"] == 5 and not status["usable"] and ca2.key_id in status["reason"], status
        assert status["issuers"][ca1.key_id]["usable"] and status["issuers"][ca2.key_id]["crl_number"] is None

        # CA2's CRL has a LOWER number than CA1's: not a replay, the numbers are per issuer.
        body, code = split_status(_upload(hub, ca2.crl(3, d2_gone[2])).stdout)
        assert code == 201, body
        assert _accepted(hub, d1) and _accepted(hub, d2)
        assert not _accepted(hub, d1_gone) and _last_refusal(hub)["reason"] == "certificate revoked"
        # OpenSSL itself found CA2's CRL for CA2's device (not CA1's, which has the same issuer name)
        assert not _accepted(hub, d2_gone) and _last_refusal(hub)["reason"] == "certificate revoked"
        status = hub.status()
        assert status["usable"] and status["crl_number"] == 5, status
        assert {k: v["crl_number"] for k, v in status["issuers"].items()} == {ca1.key_id: 5, ca2.key_id: 3}
        # replay is judged per issuer: CA1's 4 is older than CA1's 5, CA2's 4 is newer than CA2's 3
        body, code = split_status(_upload(hub, ca1.crl(4)).stdout)
        assert code == 422 and b"older than the held 5" in body, body
        body, code = split_status(_upload(hub, ca2.crl(4, d2_gone[2], valid_s=4)).stdout)
        assert code == 201, body

        # CA2's CRL runs out: only CA2's devices are refused.
        time.sleep(4.5)
        assert not _accepted(hub, d2) and "no current CRL for the device's CA" in _last_refusal(hub)["reason"]
        assert _accepted(hub, d1)
        assert not hub.status()["issuers"][ca2.key_id]["usable"]
    finally:
        hub.stop()
    crl_files = sorted(p.name for p in (hub.state / "crls").iterdir())
    assert crl_files == sorted(f"{c.key_id}.crl" for c in (ca1, ca2))

    # A restart keeps each issuer's CRL: CA1's devices in at once, CA2's until its new CRL arrives.
    hub = _hub_of(tmp_path, "hub", bundle)
    try:
        assert _accepted(hub, d1) and not _accepted(hub, d1_gone) and not _accepted(hub, d2)
        body, code = split_status(_upload(hub, ca2.crl(6, d2_gone[2])).stdout)
        assert code == 201, body
        assert _accepted(hub, d2) and not _accepted(hub, d2_gone)
    finally:
        hub.stop()


def test_a_one_ca_state_dir_is_migrated_on_start(tmp_path: Path) -> None:
    """A hub of the one-CA version kept ``current.crl``: after the upgrade it is used (moved to
    ``crls/<key id>.crl``) and a second CA can be added to ``--ca-cert`` beside it."""
    ca1, ca2 = ThrowawayCa.make(), ThrowawayCa.make()
    d1, d1_gone, d2 = (
        ca1.device(tmp_path, "old-keep"),
        ca1.device(tmp_path, "old-gone"),
        ca2.device(tmp_path, "new"),
    )
    one = tmp_path / "ca1.pem"
    one.write_bytes(ca1.cert.public_bytes(serialization.Encoding.PEM))
    state = tmp_path / "hub"
    ckms("hub", "init", "--state-dir", str(state), "--name", "hub.lab.test")
    legacy = ca1.crl(7, d1_gone[2])
    (state / "current.crl").write_bytes(legacy)  # the old layout

    hub = _hub_of(tmp_path, "hub", one)
    try:
        assert _accepted(hub, d1) and not _accepted(hub, d1_gone)
        assert [e["number"] for e in hub.events("crl.migrated")] == [7]
        status = hub.status()
        assert status["crl_number"] == 7 and status["usable"] and status["reason"] == "", status
        # the migrated number still guards against replay
        body, code = split_status(_upload(hub, ca1.crl(6)).stdout)
        assert code == 422 and b"older" in body, body
    finally:
        hub.stop()
    assert not (state / "current.crl").exists()
    assert (state / "crls" / f"{ca1.key_id}.crl").read_bytes() == legacy

    both = tmp_path / "cas.pem"
    both.write_bytes(one.read_bytes() + ca2.cert.public_bytes(serialization.Encoding.PEM))
    hub = _hub_of(tmp_path, "hub", both)
    try:
        assert _accepted(hub, d1) and not _accepted(hub, d2)  # CA2 has no CRL yet: fail closed for it only
        assert not hub.events("crl.migrated")  # nothing left to migrate
        body, code = split_status(_upload(hub, ca2.crl(8)).stdout)
        assert code == 201, body
        assert _accepted(hub, d1) and _accepted(hub, d2) and not _accepted(hub, d1_gone)
    finally:
        hub.stop()


@pytest.fixture()
def crl_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain-HTTP directory listing standing in for the CA's CRL listener: (directory, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _relay_urls(bundle: Path, hub: HubProcess, state: Path, *urls: str) -> tuple[int, dict]:
    proc = ckms(
        "hub", "relay", "--once", "--json", *(a for u in urls for a in ("--crl-url", u)),
        "--ca-cert", str(bundle), "--hub-url", hub.upload_url, "--hub-cert", str(hub.cert),
        "--state-file", str(state), check=False,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


def test_relay_carries_one_crl_per_ca_key(tmp_path: Path, crl_site: tuple[Path, str]) -> None:
    """Repeated ``--crl-url``: each CA key's CRL reaches the hub; the state file keeps a number per
    issuer, and a one-CA state file's number still guards against replay."""
    site, base = crl_site
    ca1, ca2 = ThrowawayCa.make(), ThrowawayCa.make()
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (ca1, ca2)))
    d1, d2 = ca1.device(tmp_path, "r1"), ca2.device(tmp_path, "r2")
    (site / "g2").mkdir()
    (site / "full.crl").write_bytes(ca1.crl(20))
    (site / "g2" / "full.crl").write_bytes(ca2.crl(21))
    urls = (f"{base}/full.crl", f"{base}/g2/full.crl")
    state = tmp_path / "relay.json"
    hub = _hub_of(tmp_path, "hub", bundle)
    try:
        # One URL only: CA1's CRL arrives, but the hub still lacks CA2's: not current (exit 1).
        rc, one = _relay_urls(bundle, hub, state, urls[0])
        assert rc == 1 and one["issuers"][ca1.key_id]["uploaded"], one
        assert any("no usable CRL" in p and ca2.key_id in p for p in one["problems"]), one
        assert _accepted(hub, d1) and not _accepted(hub, d2)

        rc, both = _relay_urls(bundle, hub, state, *urls)
        assert rc == 0 and both["current"] and both["uploaded"], both
        assert {k: (v["fetched"], v["hub_after"]) for k, v in both["issuers"].items()} == {
            ca1.key_id: (20, 20),
            ca2.key_id: (21, 21),
        }
        assert not both["issuers"][ca1.key_id]["uploaded"] and both["issuers"][ca2.key_id]["uploaded"]
        assert both["fetched"] == 21 and both["hub_after"] == 21, both
        assert json.loads(state.read_text())["numbers"] == {ca1.key_id: 20, ca2.key_id: 21}
        assert _accepted(hub, d1) and _accepted(hub, d2)

        # A CRL older than the one relayed from ITS issuer is refused; the other issuer's is unaffected.
        (site / "full.crl").write_bytes(ca1.crl(19))
        (site / "g2" / "full.crl").write_bytes(ca2.crl(22))
        rc, replay = _relay_urls(bundle, hub, state, *urls)
        assert rc == 1 and [p for p in replay["problems"] if "older than the held 20" in p], replay
        assert replay["issuers"][ca2.key_id]["hub_after"] == 22, replay

        # The one-CA state file ({"number": n}) is still read: n is the floor for every issuer.
        state.write_text(json.dumps({"number": 30}) + "\n")
        (site / "full.crl").write_bytes(ca1.crl(31))
        rc, legacy = _relay_urls(bundle, hub, state, *urls)
        assert rc == 1 and [p for p in legacy["problems"] if "older than the held 30" in p], legacy
        assert legacy["issuers"][ca1.key_id]["hub_after"] == 31, legacy
        assert json.loads(state.read_text())["numbers"] == {ca1.key_id: 31, ca2.key_id: 30}
    finally:
        hub.stop()
