"""``make bench-peer``: the issuance load of ``make bench`` against ckms, then against step-ca (issue 15).

Why: a certificates/s figure means little alone; the same load on the same machine against a
well-known open-source CA, with its CA key in the same SoftHSM2 over PKCS#11, shows whether
ckms's per-certificate work (linting, audit chain, durable SQLite) costs more than it should.

1. ckms: ``python -m ckms_lab.bench --json`` (the ``make bench-single`` headline) in a subprocess;
   its closed-loop certificates/s and latency percentiles (and its open-loop figures) are read
   from that JSON.
2. step-ca (smallstep/certificates at :data:`STEP_CA_VERSION`, built by
   ``scripts/build-step-ca.sh`` into the tool cache): a throwaway SoftHSM2 token holding the
   EC P-256 issuing key (generated in the token, never extractable), an intermediate certificate
   for it under a throwaway root, a hand-written ``ca.json`` with a ``pkcs11`` ``kms`` section,
   step-ca's default database (``badgerv2``), a JWK provisioner and TLS on a local port.
3. The same closed loop as for ckms: ``--clients`` keep-alive TLS connections, one thread each,
   spread over ``--processes`` client processes, for ``--duration`` seconds; each request is
   ``POST /1.0/sign`` with a fresh pre-generated P-256 CSR and a one-time token (an ES256 JWT
   signed with the provisioner's key), both made before the timed phase so the client costs
   about what it costs against ckms. Every response must be 201 with a body; the first one on
   each connection is parsed as a certificate for that CSR's subject, signed by the HSM key.

badgerv2's default options include ``SyncWrites``, so step-ca's commits are durable as ckms's
SQLite with ``synchronous=FULL`` is. What still differs besides the software: ckms authenticates
each client by mutual TLS, lints every certificate before the HSM signs it and keeps an audit
chain; step-ca checks and stores each one-time token and stores the certificate.

Prints ckms and step-ca certificates/s with p50/p99 and ``ratio ckms/step-ca``; ``--json``
prints the same as JSON. Both CAs, their HSM and the load generator share this machine's CPUs,
run one after the other; other load on the machine makes the figures noisy.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ckms_lab.bench import _free_port, _percentile  # the same load statistics and ports as make bench

STEP_CA_VERSION = "v0.30.2"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PROVISIONER = "bench"
TOKEN_LABEL = "step-ca-bench"
KEY_ID_HEX = "7331"  # CKA_ID of the issuing key; step-ca's URI `id=7331` is hex-decoded
KEY_LABEL = "step-ca-issuing"
CSR_PREFIX = "peer"


def step_ca_binary() -> Path:
    """The cached step-ca build, or an explicit error saying how to build it."""
    cache = Path(os.environ.get("CKMS_TOOL_CACHE", Path.home() / ".cache" / "ckms"))
    binary = cache / "step-ca" / STEP_CA_VERSION / "step-ca"
    if not os.access(binary, os.X_OK):
        raise SystemExit(
            f"bench-peer: no step-ca build at {binary}; build it with scripts/build-step-ca.sh "
            "(or run make bench-peer, which does)"
        )
    return binary


# --- one-time tokens ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The provisioner's public JWK as step-ca's ca.json holds it; ``kid`` is its RFC 7638 thumbprint."""
    numbers = key.public_key().public_numbers()
    x, y = _b64url(numbers.x.to_bytes(32, "big")), _b64url(numbers.y.to_bytes(32, "big"))
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}


def sign_token(
    key: ec.EllipticCurvePrivateKey, kid: str, *, audience: str, subject: str, now: int, lifetime: int
) -> str:
    """A one-time token for step-ca's JWK provisioner: a compact ES256 JWS (RFC 7515/7518).

    step-ca finds the provisioner by ``iss`` + header ``kid``, checks the signature, ``aud`` (its
    ``/1.0/sign`` URL), ``nbf``/``exp``/``iat`` (``iat`` not before the CA started), a non-empty
    ``sub`` equal to the CSR's common name, the CSR's SANs against ``sans``, and stores ``jti``
    so that each token signs once.
    """
    header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
    claims = {
        "iss": PROVISIONER,
        "sub": subject,
        "aud": audience,
        "sans": [subject],
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# --- requests ----------------------------------------------------------------------------------


def _make_csrs(args: tuple[int, int]) -> list[bytes]:
    """PEM CSRs of fresh P-256 keys with only a common name, as ``make bench`` sends to ckms."""
    start, count = args
    out = []
    for i in range(start, start + count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{CSR_PREFIX}-{i}")]))
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


def _make_requests(args: tuple[bytes, str, str, str, int, int, list[bytes]]) -> list[bytes]:
    """Raw HTTP/1.1 ``POST /1.0/sign`` requests, each with its CSR and its own one-time token."""
    key_pem, kid, host_header, audience, now, first, csrs = args
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    out = []
    for offset, csr in enumerate(csrs):
        token = sign_token(
            key, kid, audience=audience, subject=f"{CSR_PREFIX}-{first + offset}", now=now, lifetime=3600
        )
        body = json.dumps({"csr": csr.decode(), "ott": token}).encode()
        out.append(
            (
                f"POST /1.0/sign HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    return out


class StepConnection:
    """A lean keep-alive HTTPS client for step-ca's JSON API: raw TLS socket, pre-built requests.

    The same design as ckms_lab.bench's EST client, so that the load generator costs the same on
    both sides: every response's status is checked and its body read in full (Content-Length or
    chunked, as Go's net/http sends a body larger than its buffer), and the first response on each
    connection is parsed down to the certificate.
    """

    def __init__(
        self, host: str, port: int, ctx: ssl.SSLContext, issuer: x509.Certificate | None = None
    ) -> None:
        self._sock = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
        self._buf = b""
        self._issuer = issuer
        self.checked = False

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._fill()
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, length: int) -> bytes:
        while len(self._buf) < length:
            self._fill()
        data, self._buf = self._buf[:length], self._buf[length:]
        return data

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self._sock.sendall(raw)
        head = self._read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")  # no trailers: the empty line that ends the body
                    break
                parts.append(self._read_exact(size))
                self._read_exact(2)
            body = b"".join(parts)
        else:
            body = self._read_exact(int(headers.get(b"content-length", b"0")))
        return status, body

    def sign(self, raw: bytes, expected_cn: str) -> None:
        status, body = self.request(raw)
        if status not in (200, 201) or not body:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        if not self.checked:  # prove the answer is a real certificate for this CSR, once per connection
            cert = x509.load_pem_x509_certificate(json.loads(body)["crt"].encode())
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            if cn != expected_cn:
                raise RuntimeError(f"certificate for {cn!r}, expected {expected_cn!r}")
            if self._issuer is not None:  # signed by the issuing key in the token
                cert.verify_directly_issued_by(self._issuer)
            self.checked = True

    def close(self) -> None:
        self._sock.close()


def _client_process(
    port: int,
    root_pem: bytes,
    issuer_pem: bytes,
    requests: list[tuple[int, bytes]],
    threads: int,
    duration: float,
    start_at: float,
    queue: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """One load process: ``threads`` keep-alive clients in a closed loop until ``duration`` is over."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    issuer = x509.load_pem_x509_certificate(issuer_pem)
    latencies: list[float] = []
    errors: list[str] = []
    last_done = [start_at]
    lock = threading.Lock()
    next_index = [0]

    def take() -> int | None:
        with lock:
            i = next_index[0]
            if i >= len(requests):
                return None
            next_index[0] += 1
            return i

    def worker() -> None:
        conn = StepConnection("127.0.0.1", port, ctx, issuer)
        try:
            while True:
                i = take()
                t0 = time.monotonic()
                if i is None or t0 > start_at + duration:
                    return
                number, raw = requests[i]
                try:
                    conn.sign(raw, f"{CSR_PREFIX}-{number}")
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = StepConnection("127.0.0.1", port, ctx, issuer)
                    continue
                t1 = time.monotonic()
                with lock:
                    latencies.append(t1 - t0)
                    last_done[0] = max(last_done[0], t1)
        finally:
            conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    while time.monotonic() < start_at - 0.5:
        time.sleep(0.05)
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put((latencies, errors, last_done[0], next_index[0] >= len(requests)))


def drive(
    port: int,
    root_pem: bytes,
    issuer_pem: bytes,
    requests: list[bytes],
    *,
    processes: int,
    threads: int,
    duration: float,
) -> dict[str, Any]:
    """The closed loop from ``processes`` client processes of ``threads`` connections each."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 2.0
    share = len(requests) // processes
    numbered = list(enumerate(requests))
    procs = [
        ctx.Process(
            target=_client_process,
            args=(
                port,
                root_pem,
                issuer_pem,
                numbered[i * share : (i + 1) * share],
                threads,
                duration,
                start_at,
                queue,
            ),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors: list[str] = []
    ran_out = False
    last_done = start_at
    for _ in procs:
        lat, err, done, exhausted = queue.get()
        latencies += lat
        errors += err
        ran_out = ran_out or exhausted
        last_done = max(last_done, done)
    for p in procs:
        p.join()
    # If the pre-generated requests ran out early, the rate is over the time actually loaded.
    elapsed = min(duration, last_done - start_at) if ran_out else duration
    return {
        "clients": processes * threads,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "ran_out_of_requests": ran_out,
        "certs_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


# --- the throwaway step-ca ---------------------------------------------------------------------


@dataclass
class StepCA:
    """A throwaway step-ca: its directory, port, root certificate and provisioner key."""

    workdir: Path
    port: int
    root_pem: bytes
    provisioner_key: ec.EllipticCurvePrivateKey
    kid: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def audience(self) -> str:
        return f"https://127.0.0.1:{self.port}/1.0/sign"

    def start(self, binary: Path, timeout: float = 60.0) -> None:
        log = (self.workdir / "step-ca.log").open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [str(binary), str(self.workdir / "ca.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        log.close()
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        deadline = time.monotonic() + timeout
        health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"bench-peer: step-ca exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                conn = StepConnection("127.0.0.1", self.port, ctx)
                try:
                    status, _ = conn.request(health)
                finally:
                    conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"bench-peer: step-ca not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "step-ca.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _run(cmd: list[str], env: dict[str, str]) -> bytes:
    done = subprocess.run(cmd, env=env, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"bench-peer: {' '.join(cmd[:2])} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _hsm_issuing_key(workdir: Path, pin: str) -> tuple[dict[str, str], ec.EllipticCurvePublicKey]:
    """A fresh SoftHSM2 token with an EC P-256 key pair generated inside it (private key sensitive and
    never extractable); returns the environment that selects the token and the public key."""
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench-peer: {tool} not found (apt-get install softhsm2 opensc)")
    tokens = workdir / "tokens"
    tokens.mkdir()
    conf = workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = os.environ | {"SOFTHSM2_CONF": str(conf)}
    _run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", pin, "--so-pin", pin],
        env,
    )
    p11 = ["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", TOKEN_LABEL]
    _run(
        [*p11, "--login", "--pin", pin, "--keypairgen", "--key-type", "EC:prime256v1"]
        + ["--id", KEY_ID_HEX, "--label", KEY_LABEL],
        env,
    )
    pub_der = workdir / "issuing.pub.der"
    _run([*p11, "--read-object", "--type", "pubkey", "--id", KEY_ID_HEX, "-o", str(pub_der)], env)
    public = serialization.load_der_public_key(pub_der.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return env, public


def _ca_certificates(issuing: ec.EllipticCurvePublicKey) -> tuple[bytes, bytes]:
    """A throwaway root (its key only in memory, then gone) and the intermediate for the HSM key."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC) - timedelta(minutes=5)
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-peer root CA")])
    sub_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-peer issuing CA")])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(sub_name)
        .issuer_name(root_name)
        .public_key(issuing)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(issuing), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return root.public_bytes(pem), intermediate.public_bytes(pem)


def setup_step_ca(workdir: Path) -> StepCA:
    """Token, key, certificates and ca.json of a throwaway step-ca (not started)."""
    pin = uuid.uuid4().hex[:16]
    env, issuing = _hsm_issuing_key(workdir, pin)
    root_pem, intermediate_pem = _ca_certificates(issuing)
    (workdir / "root_ca.crt").write_bytes(root_pem)
    (workdir / "intermediate_ca.crt").write_bytes(intermediate_pem)
    provisioner_key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(provisioner_key)
    port = _free_port()
    config = {
        "root": str(workdir / "root_ca.crt"),
        "federatedRoots": None,
        "crt": str(workdir / "intermediate_ca.crt"),
        "key": f"pkcs11:id={KEY_ID_HEX};object={KEY_LABEL}",
        "kms": {
            "type": "pkcs11",
            "uri": f"pkcs11:module-path={SOFTHSM_MODULE};token={TOKEN_LABEL}?pin-value={pin}",
        },
        "address": f"127.0.0.1:{port}",
        "insecureAddress": "",
        "dnsNames": ["127.0.0.1", "localhost"],
        "logger": {"format": "text"},
        # step-ca's default database, as `step ca init` writes it.
        "db": {"type": "badgerv2", "dataSource": str(workdir / "db"), "badgerFileLoadingMode": ""},
        "authority": {"provisioners": [{"type": "JWK", "name": PROVISIONER, "key": jwk}]},
        # The TLS section `step ca init` writes.
        "tls": {
            "cipherSuites": [
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ],
            "minVersion": 1.2,
            "maxVersion": 1.3,
            "renegotiation": False,
        },
    }
    ca_json = workdir / "ca.json"
    ca_json.write_text(json.dumps(config, indent=2))
    ca_json.chmod(0o600)
    return StepCA(workdir, port, root_pem, provisioner_key, jwk["kid"], env)


def _pool_map(func: Any, jobs: list[Any]) -> list[Any]:
    with mp.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        return [item for chunk in pool.map(func, jobs) for item in chunk]


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_step_ca(args: argparse.Namespace, binary: Path) -> dict[str, Any]:
    count = int(max(2000, args.step_rate_cap * args.duration))
    chunk = 1000
    csrs: list[bytes] = _pool_map(_make_csrs, [(i, min(chunk, count - i)) for i in range(0, count, chunk)])
    with tempfile.TemporaryDirectory(prefix="ckms-bench-peer-") as tmp:
        ca = setup_step_ca(Path(tmp))
        try:
            ca.start(binary)
            # `iat` must not be before the CA's start (step-ca refuses older tokens), to the second.
            now = max(int(time.time()), int(ca.started_at) + 1)
            key_pem = ca.provisioner_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            host = f"127.0.0.1:{ca.port}"
            requests: list[bytes] = _pool_map(
                _make_requests,
                [
                    (key_pem, ca.kid, host, ca.audience, now, i, csrs[i : i + chunk])
                    for i in range(0, count, chunk)
                ],
            )
            processes = max(1, args.processes)
            assert ca.process is not None
            server_cpu, client_cpu = _process_cpu_s(ca.process.pid), _children_cpu_s()
            result = drive(
                ca.port,
                ca.root_pem,
                (ca.workdir / "intermediate_ca.crt").read_bytes(),
                requests,
                processes=processes,
                threads=max(1, args.clients // processes),
                duration=args.duration,
            )
            # Where the two cores went during the timed phase (the clients' CPU includes their setup).
            result["step_ca_cpu_s"] = round(_process_cpu_s(ca.process.pid) - server_cpu, 1)
            result["load_generator_cpu_s"] = round(_children_cpu_s() - client_cpu, 1)
            if result["errors"] and not result["requests"]:
                raise SystemExit(f"bench-peer: every step-ca request failed: {result['first_error']}")
            return {"version": STEP_CA_VERSION, "closed_loop": result}
        finally:
            ca.stop()


def run_ckms(args: argparse.Namespace) -> dict[str, Any]:
    """The ckms headline from ``python -m ckms_lab.bench --json`` (SQLite, one node)."""
    cmd = [
        sys.executable,
        "-m",
        "ckms_lab.bench",
        "--json",
        "--duration",
        str(args.duration),
        "--clients",
        str(args.clients),
        "--processes",
        str(args.processes),
        "--rates",
        "200",  # the ratio is of the closed loops; one open loop is enough here
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"bench-peer: {' '.join(cmd[1:])} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    out = done.stdout
    try:
        result: dict[str, Any] = json.loads(out[out.index("{") :])
    except ValueError as exc:
        raise SystemExit(f"bench-peer: no JSON from ckms_lab.bench: {exc}\n{out[-2000:]}") from exc
    for key in ("closed_loop", "open_loop"):
        if key not in result:
            raise SystemExit(f"bench-peer: ckms_lab.bench --json has no {key!r}: {out[-2000:]}")
    return {"closed_loop": result["closed_loop"], "open_loop": result["open_loop"]}


def _line(name: str, loop: dict[str, Any]) -> str:
    return (
        f"{name}: {loop['certs_per_s']} certs/s, p50 {loop['p50_ms']} ms, p99 {loop['p99_ms']} ms, "
        f"errors {loop['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ckms_lab.bench_peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive clients (closed loop)")
    parser.add_argument(
        "--processes", type=int, default=2, help="client processes the clients are spread over"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load against each CA")
    parser.add_argument(
        "--step-rate-cap",
        type=float,
        default=2500.0,
        help="step-ca requests pre-generated per second of --duration (a run that uses them all up "
        "says so and is rated over the time it ran)",
    )
    parser.add_argument("--step-ca-only", action="store_true", help="skip ckms (no ratio): for debugging")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    binary = step_ca_binary()  # fail before the ckms run if step-ca is not built
    ckms = None if args.step_ca_only else run_ckms(args)
    step = run_step_ca(args, binary)
    ratio = None
    if ckms is not None and step["closed_loop"]["certs_per_s"]:
        ratio = round(ckms["closed_loop"]["certs_per_s"] / step["closed_loop"]["certs_per_s"], 2)
    report = {
        "clients": args.clients,
        "processes": args.processes,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "ckms": ckms,
        "step_ca": step,
        "ratio_ckms_per_step_ca": ratio,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"closed loop, {args.clients} keep-alive TLS clients, {args.duration:g} s, {os.cpu_count()} CPUs:")
    if ckms is not None:
        print(_line("ckms (EST simpleenroll, mTLS)", ckms["closed_loop"]))
        for o in ckms["open_loop"]:  # one entry per open-loop rate of ckms_lab.bench
            print(f"  (ckms open loop at {o['rate_per_s']:g}/s: p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms)")
    print(_line(f"step-ca {STEP_CA_VERSION} (POST /1.0/sign, JWK)", step["closed_loop"]))
    loop = step["closed_loop"]
    print(
        f"  (CPU during the step-ca run: step-ca {loop['step_ca_cpu_s']} s, "
        f"load generator {loop['load_generator_cpu_s']} s, over {args.duration:g} s on {os.cpu_count()} CPUs)"
    )
    if step["closed_loop"]["ran_out_of_requests"]:
        print("  (step-ca used up the pre-generated requests: raise --step-rate-cap)")
    if step["closed_loop"]["first_error"]:
        print(f"  (first step-ca error: {step['closed_loop']['first_error']})")
    if ratio is not None:
        print(f"ratio ckms/step-ca = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
