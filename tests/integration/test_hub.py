"""The toy model's CRL path end to end (issue 14 part 1; A.37, A.46): CA → terminal's relay → IoT hub.

Real daemon, real ``ckms hub serve`` and ``ckms hub relay`` processes, real TLS: a device enrolled by the
terminal is let in by the hub; once revoked and relayed, the same device is refused at the handshake.
The hub takes no CRL it cannot verify: a forged one (another key), a replayed older one and a delta are
refused, and without any CRL it lets nobody in.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from .conftest import CKMS, CaHome, Daemon, ckms, curl_enroll, free_port, make_csr, split_status


class HubProcess:
    def __init__(self, state: Path, ca: CaHome) -> None:
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
                str(ca.ca_cert),
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


@pytest.fixture()
def hub(tmp_path: Path, ca: CaHome, daemon: Daemon) -> Iterator[HubProcess]:
    state = tmp_path / "hub"
    ckms("hub", "init", "--state-dir", str(state), "--name", "hub.lab.test")
    proc = HubProcess(state, ca)
    yield proc
    proc.proc.terminate()
    proc.proc.wait(10)


def _device(ca: CaHome, tmp: Path, name: str) -> tuple[Path, Path, int]:
    csr, key = make_csr(name)
    out = curl_enroll(ca, csr, tmp)
    body, code = split_status(out.stdout)
    assert code == 200, body
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert.serial_number


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
