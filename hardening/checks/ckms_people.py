"""Helpers for checks that act as a person of the lab (not a test module: pytest does not collect it).

Each person acts with their own credential. The controller persons (ckms_ca_people with enrol_on
controller: admin-1, authority-1, auditor-1) keep key, certificate and password on the controller in
``$CKMS_TOOL_CACHE/ansible/<stack>/people/<id>/`` (role ckms_ca, ``ckms_ca_people_dir``). A check that acts
as one of them runs ``ckms … --as ID --password-file -`` on the CA host as the CA service user and sends
the password over the SSH channel's stdin: never on a command line, in the environment or in a file on
the CA host. Their private keys never leave the controller: a TLS connection made with one (``tls_post``)
runs on the controller, through an SSH port forward to the daemon, end to end to the daemon's listener.
The terminal persons (operator-1, operator-2) act on the terminal, as their own Linux accounts.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckms_checks import CA_HOME, CA_USER, CA_VENV, SOFTHSM_CONF, crl_path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

CKMS = f"{CA_VENV}/bin/ckms"
TERMINAL_PEOPLE = "/etc/ckms-terminal/people"


def people_dir() -> Path:
    """The controller's person directories (as ckms_ca_people_dir of the role: tool cache, lab stack)."""
    explicit = os.environ.get("CKMS_PEOPLE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("CKMS_TOOL_CACHE") or str(Path.home() / ".cache" / "ckms")
    return Path(cache) / "ansible" / (os.environ.get("CKMS_LAB_STACK") or "lab") / "people"


def person_file(person: str, name: str) -> Path:
    return people_dir() / person / name


def password(person: str) -> str:
    path = person_file(person, "password")
    assert path.exists(), f"no credential of {person} on the controller ({path}): was the lab deployed?"
    return path.read_text().strip()


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


def _ssh_backend(host) -> Any:
    """testinfra's SSH backend behind an ansible:// host (the one host.run uses)."""
    backend = host.backend
    if getattr(backend, "NAME", "") == "ansible":
        inner = backend.ansible_runner.get_host(
            backend.host, ssh_config=backend.ssh_config, ssh_identity_file=backend.ssh_identity_file
        )
        backend = inner.backend if inner is not None else None
    assert backend is not None and hasattr(backend, "_build_ssh_command"), "the host is not reached over SSH"
    return backend


def run_with_stdin(host, command: str, data: str, timeout: float = 120) -> Result:
    """``command`` on the host with ``data`` on its stdin (over the SSH channel, never on a command line)."""
    backend = _ssh_backend(host)
    cmd, args = backend._build_ssh_command(backend.get_command(command))
    proc = subprocess.run(
        backend.quote(" ".join(cmd), *args),
        shell=True,
        input=data,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ckms_as(host, person: str, args: str, secret: str | None = None) -> Result:
    """``ckms ARGS --as PERSON --password-file -`` on the CA host as the CA user, the password on stdin."""
    command = (
        f"cd / && runuser -u {CA_USER} -- env CKMS_HOME={CA_HOME} SOFTHSM2_CONF={SOFTHSM_CONF} "
        f"{CKMS} {args} --home {CA_HOME} --as {shlex.quote(person)} --password-file -"
    )
    return run_with_stdin(host, command, (password(person) if secret is None else secret) + "\n")


def decided(result: Result) -> dict[str, Any]:
    """The JSON a proposal or decision printed (empty when it printed none)."""
    doc = result.json()
    return doc if isinstance(doc, dict) else {}


def propose_and_approve(host, proposer: str, approver: str, args: str) -> tuple[Result, Result | None]:
    """One two-person change: ``proposer`` proposes (``args``), ``approver`` approves the change it created."""
    proposed = ckms_as(host, proposer, args)
    number = decided(proposed).get("change")
    if proposed.rc != 0 or number is None:
        return proposed, None
    return proposed, ckms_as(host, approver, f"change approve {int(number)} --json")


def withdraw(host, person: str, result: Result) -> None:
    """Reject a proposal a check left open (so no stray proposal waits on the live CA)."""
    number = decided(result).get("change")
    if number is not None and decided(result).get("status") == "proposed":
        ckms_as(host, person, f"change reject {int(number)} --reason check-cleanup --json")


# --- TLS as a controller person, relayed through an SSH session ----------------------------------------
@contextlib.contextmanager
def forward(host, address: str, port: int) -> Iterator[socket.socket]:
    """A byte stream to ``address:port`` as ``host`` sees it: a command on ``host`` (bash's /dev/tcp)
    relays it over the SSH session's stdin/stdout. Hardened hosts refuse SSH port forwarding
    (AllowTcpForwarding no), so no -L/-W; the caller's TLS runs over the returned socket."""
    backend = _ssh_backend(host)
    relay = f"exec 3<>/dev/tcp/{address}/{int(port)}; cat <&3 & exec cat >&3"
    cmd, args = backend._build_ssh_command(f"exec bash -c {shlex.quote(relay)}")
    line = backend.quote(" ".join(cmd), *args)
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen(
        line, shell=True, stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL, start_new_session=True
    )
    theirs.close()
    try:
        mine.settimeout(30)
        yield mine
    finally:
        mine.close()
        proc.terminate()
        proc.wait(timeout=10)


def tls_post(
    host,
    person: str,
    public_host: str,
    path: str,
    body: bytes,
    content_type: str,
    port: int = 8443,
    via=None,
) -> tuple[int, str]:
    """POST to the daemon with ``person``'s own client certificate; (HTTP status, body). The TCP stream
    runs through an SSH forward from ``via`` (the terminal in the lab, whose flow to the CA the router and
    the CA's firewall admit) or else from the CA host itself; TLS ends here, so the key stays here."""
    ca_pem = people_dir() / "ca.pem"
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(person_file(person, "cert.pem")), str(person_file(person, "key.pem")))
    with forward(via or host, public_host, port) as raw:
        conn = http.client.HTTPSConnection(public_host, port, context=ctx, timeout=30)
        conn.sock = ctx.wrap_socket(raw, server_hostname=public_host)
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        conn.close()
        return resp.status, text


def csr_b64(common_name: str) -> bytes:
    """A fresh P-256 request (base64 DER, as EST simpleenroll takes it); its key is discarded."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


# --- issuance and revocation by a named operator (A.38 and the like) -------------------------------
def issue_and_revoke(host, terminal, public_host: str, cn: str) -> dict[str, Any]:
    """An operator issues a certificate for ``cn``, revokes it and publishes a CRL, all with their own
    credential; the CRL is then fetched on the CA host. With a controller operator (Molecule: no
    terminal) the TLS runs on the controller through an SSH forward; otherwise on the terminal as
    ``operator-1``'s own account (ckms-enroll, curl). Returns what happened, for evidence and asserts."""
    controller_op = next(
        (p.name for p in sorted(people_dir().glob("operator-*")) if (p / "key.pem").exists()), None
    )
    if controller_op is not None:
        status, body = tls_post(
            host,
            controller_op,
            public_host,
            "/.well-known/est/simpleenroll",
            csr_b64(cn),
            "application/pkcs10",
        )
        serial = ""
        if status == 200:
            (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
            serial = format(cert.serial_number, "x")
        op = controller_op

        def post(path: str, doc: dict[str, Any]) -> tuple[int, str]:
            return tls_post(host, op, public_host, path, json.dumps(doc).encode(), "application/json")

        who = controller_op
    else:
        assert terminal is not None, "no operator credential on the controller and no terminal"
        who = "operator-1"
        cred = f"{TERMINAL_PEOPLE}/{who}"
        out = terminal.run(
            f"cd /tmp && runuser -u {who} -- sh -c "
            + shlex.quote(
                f"d=$(mktemp -d) && ckms-enroll {cn} $d >/dev/null && "
                f"openssl x509 -in $d/{cn}.pem -noout -serial | cut -d= -f2; rm -rf $d"
            )
        )
        status, serial = (200 if out.rc == 0 else 0), out.stdout.strip().lower()

        def post(path: str, doc: dict[str, Any]) -> tuple[int, str]:
            got = terminal.run(
                f"cd /tmp && runuser -u {who} -- sh -c "
                + shlex.quote(
                    ". /etc/ckms-terminal/est.conf; base=${EST_URL%/.well-known/est}; "
                    "curl -s -w '\\n%{http_code}' --tlsv1.3 --max-time 20 --cacert /etc/ckms-terminal/ca.pem "
                    f"--cert {cred}/cert.pem --key {cred}/key.pem -H 'Content-Type: application/json' "
                    f'-d {shlex.quote(json.dumps(doc))} "$base{path}"'
                )
            )
            text, _, code = got.stdout.rpartition("\n")
            return int(code or 0), text

    revoked = post("/api/v1/revocations", {"serial": serial, "reason": "superseded"}) if serial else (0, "")
    published = post("/api/v1/crl/publish", {}) if serial else (0, "")
    listed = False
    for _ in range(15 if serial else 0):  # served as soon as the publisher has stored it
        crl = host.run(
            f"curl -s --max-time 10 http://{public_host}:8080{crl_path(host)} | openssl crl -inform DER -noout -text"
        )
        listed = f"SERIAL NUMBER: {serial.upper()}" in crl.stdout.upper()
        if listed:
            break
        time.sleep(1)
    return {
        "operator": who,
        "issued": status,
        "serial": serial,
        "revoked": revoked[0],
        "crl_published": published[0],
        "serial_in_crl": listed,
    }
