"""``ckms hub ...``: the IoT hub of the toy model and the terminal's CRL relay (issue 14 part 1; A.37, A.46).

* ``hub init``   the hub's own key and self-signed certificate (outside the CKMS, guidance 1.4 note 9);
                 prints the certificate's SHA-256 fingerprint for the relay and devices to pin;
* ``hub serve``  the hub's gateway (device listener + CRL upload listener), see :mod:`ckms_app.hub.gateway`;
* ``hub relay``  on the terminal: CA → checks → hub, once or every ``--interval`` seconds; on a failed
                 round it runs ``--alert-command`` (the message on stdin) and exits 1 with ``--once``.
                 ``--crl-url`` is repeated once per CA key (after a key rollover the old key's CRL and the
                 new key's are both relayed); ``--ca-cert`` of ``serve`` and ``relay`` may hold several CAs;
* ``hub connect`` a device's view: connect to the hub with a certificate and key, print what happened
                 (``accepted`` / ``refused``), exit 0 only when accepted (drills and checks use it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.hub.gateway import MAX_CONNECTIONS, MAX_PER_SOURCE, HubSettings, serve
from ckms_app.hub.relay import CrlRelay, RelaySettings

COMMAND = "hub"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hub = sub.add_parser(
        COMMAND, help="the IoT hub (lab/reference) and the terminal's CRL relay"
    ).add_subparsers(dest="hub_command", required=True)
    init = hub.add_parser("init", help="make the hub's own key and self-signed TLS certificate")
    init.add_argument("--state-dir", type=Path, required=True)
    init.add_argument("--name", required=True, help="the hub's DNS name (subjectAltName)")
    init.add_argument("--days", type=int, default=825)

    srv = hub.add_parser("serve", help="run the hub: devices refused when the newest CRL lists them")
    srv.add_argument("--state-dir", type=Path, required=True)
    srv.add_argument(
        "--ca-cert",
        type=Path,
        required=True,
        help="the private CA's certificates (PEM; several during a key rollover)",
    )
    srv.add_argument("--bind", required=True, help="the hub's address on its segment (no default: never all)")
    srv.add_argument("--device-port", type=int, default=8443)
    srv.add_argument("--upload-port", type=int, default=8444)
    srv.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS, help="device connections held at once, in all"
    )
    srv.add_argument(
        "--max-per-source",
        type=int,
        default=MAX_PER_SOURCE,
        help="device connections held at once per address",
    )

    relay = hub.add_parser("relay", help="carry the CA's CRL to the hub, checked (run on the terminal)")
    relay.add_argument(
        "--crl-url",
        action="append",
        required=True,
        help="a CA key's full CRL, http://…/crl/full.crl; repeat once per CA key",
    )
    relay.add_argument(
        "--ca-cert",
        type=Path,
        required=True,
        help="the private CA's certificates (PEM; several during a key rollover)",
    )
    relay.add_argument("--hub-url", required=True, help="the hub's upload listener, https://hub:8444")
    relay.add_argument("--hub-cert", type=Path, required=True, help="the hub's pinned certificate (PEM)")
    relay.add_argument(
        "--state-file", type=Path, required=True, help="remembers the last CRL number relayed per CA key"
    )
    relay.add_argument("--interval", type=float, default=60.0, help="seconds between rounds (default 60)")
    relay.add_argument("--once", action="store_true", help="one round; exit 1 if the hub is not current")
    relay.add_argument("--alert-command", help="run with the problem on stdin when a round fails")
    relay.add_argument("--json", action="store_true", help="print each round as JSON")

    conn = hub.add_parser("connect", help="connect to the hub as a device (exit 0 only when accepted)")
    conn.add_argument("--hub", required=True, help="host:port of the hub's device listener")
    conn.add_argument("--hub-cert", type=Path, required=True)
    conn.add_argument("--cert", type=Path, required=True)
    conn.add_argument("--key", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    if args.hub_command == "init":
        return _init(args.state_dir, args.name, args.days)
    if args.hub_command == "serve":
        return _serve(args)
    if args.hub_command == "relay":
        return _relay(args)
    return _connect(args)


def _init(state_dir: Path, name: str, days: int) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = state_dir / "hub.key", state_dir / "hub.crt"
    if cert_path.exists() and key_path.exists():  # idempotent: a second init keeps the pinned identity
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    print(json.dumps({"cert": str(cert_path), "sha256": fingerprint}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = HubSettings(
        ca_cert=args.ca_cert,
        state_dir=args.state_dir,
        cert=args.state_dir / "hub.crt",
        key=args.state_dir / "hub.key",
        bind=args.bind,
        device_port=args.device_port,
        upload_port=args.upload_port,
        max_connections=args.max_connections,
        max_per_source=args.max_per_source,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
    return 0


def _relay(args: argparse.Namespace) -> int:
    relay = CrlRelay(
        RelaySettings(tuple(args.crl_url), args.ca_cert, args.hub_url, args.hub_cert, args.state_file)
    )
    while True:
        result = relay.run_once()
        line = result.as_dict() | {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        if args.json:
            print(json.dumps(line), flush=True)
        elif result.current:
            print(f"hub current at CRL {result.hub_after} (uploaded: {result.uploaded})", flush=True)
        if not result.current:
            message = "ckms CRL relay: " + "; ".join(result.problems)
            print(message, file=sys.stderr, flush=True)
            if args.alert_command:
                # the operator's configured command, split like a shell would, run without one
                subprocess.run(
                    shlex.split(args.alert_command), input=message.encode(), check=False, timeout=60
                )  # noqa: S603
        if args.once:
            return 0 if result.current else 1
        time.sleep(args.interval)


def _connect(args: argparse.Namespace) -> int:
    host, _, port = args.hub.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(args.hub_cert))
    ctx.check_hostname = False  # pinned certificate
    ctx.load_cert_chain(args.cert, args.key)
    try:
        with socket.create_connection((host, int(port)), timeout=15) as raw, ctx.wrap_socket(raw) as tls:
            # TLS 1.3: the server checks the client's certificate after the client's handshake ends, so a
            # refusal shows as an alert on the first read.
            answer = tls.recv(4096).decode(errors="replace").strip()
    except (ssl.SSLError, OSError) as exc:
        print(json.dumps({"result": "refused", "reason": str(exc)}))
        return 1
    if not answer.startswith("ok "):
        print(json.dumps({"result": "refused", "reason": answer or "connection closed without an answer"}))
        return 1
    print(json.dumps({"result": "accepted", "answer": answer}))
    return 0
