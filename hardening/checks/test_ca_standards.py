"""Standards, algorithms and policy OID of the deployed CA (guidance A.02, A.05, A.44, A.52, A.54, A.59,
A.61, A.62, A.64).

Every check observes the running CA, not its configuration alone: requests are sent to the deployed
daemon over EST the way the terminal sends them (as operator-1's own Linux account and credential,
or as a controller person through an SSH relay), the certificates and CRLs it returns are parsed here
or on the CA host with the CA's own python (``ckms_probe_standards.py``: token, database read-only,
the deployed lint helper), and TLS is probed with ``openssl s_client`` from the terminal. The CSRs are
made here; the odd ones (RSA-1024, secp256k1, SHA-1, a broken signature, a policy the CA must not
take) are exactly what the daemon must refuse or ignore. Nothing on the CA is modified beyond the
few certificates issued to the check's own ``check-a..`` names.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import shlex
import time

import pytest
import testinfra
from ckms_checks import active_ca_cert, policy, probe
from ckms_checks import host_now as _since
from ckms_checks import short_records as _short
from ckms_checks import trail_since as _trail
from ckms_people import TERMINAL_PEOPLE, tls_post
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from testinfra.utils.ansible_runner import AnsibleRunner

testinfra_hosts = ["ansible://ca"]

STD = "ckms_probe_standards.py"
OPERATOR, ADMIN, AUTHORITY = "operator-1", "admin-1", "authority-1"
# the guidance's set (A.54, A.62): ECDSA P-256/SHA-256 and P-384/SHA-384 (RFC 5758 pairs)
ALLOWED_SIG = {"ecdsa-with-SHA256", "ecdsa-with-SHA384"}
ALLOWED_CURVES = {"secp256r1", "secp384r1"}
CURVE_HASH = {"secp256r1": "ecdsa-with-SHA256", "secp384r1": "ecdsa-with-SHA384"}
ALLOWED_TLS_GROUPS = {"P-256", "P-384", "prime256v1", "secp256r1", "secp384r1"}
ALLOWED_TLS_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}
P256_END = dt.datetime(2040, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # CRYPTREC: 128-bit security until 2040


# --- hosts, configuration ------------------------------------------------------------------------------
def _terminal(request):
    inv = request.config.getoption("ansible_inventory")
    hosts = AnsibleRunner(inv).get_hosts("terminal")
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inv) if hosts else None


_CACHE: dict[tuple[int, str], dict] = {}


def _cached(host, command: str) -> dict:
    """A probe whose answer does not change during a run, asked once per host."""
    key = (id(host), command)
    if key not in _CACHE:
        _CACHE[key] = probe(host, command, script=STD)
    return _CACHE[key]


def _config(host) -> dict:
    """The deployed daemon's configuration as its own loader reads ckms.toml."""
    return _cached(host, "config")


def _ca_key(host) -> dict:
    """The token's CA key object and the CA certificate."""
    return _cached(host, "ca-key")


def _cn(tag: str) -> str:
    return f"check-{tag}-{int(time.time() * 1000) % 10**10}"


# --- requests ----------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _csr(cn: str, key=None, algorithm=None, extensions=()) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    csr = builder.sign(key, algorithm or hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = (
        bytes([n])
        if n < 128
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + size + body


def _sha1_csr(cn: str) -> bytes:
    """A P-256 request signed with ecdsa-with-SHA1 (pyca refuses to make one: assembled by hand)."""
    key = ec.generate_private_key(ec.SECP256R1())
    tbs = x509.load_der_x509_csr(_csr(cn, key)).tbs_certrequest_bytes
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    ecdsa_sha1 = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d0401")))
    return _tlv(0x30, tbs + ecdsa_sha1 + _tlv(0x03, b"\x00" + signature))


def _bad_signature(cn: str) -> bytes:
    der = bytearray(_csr(cn))
    der[-1] ^= 0x01  # last byte of the ECDSA s value: still DER, no longer a valid signature
    return bytes(der)


def _enrol(host, request, der: bytes, label: str | None = None, person: str = OPERATOR) -> tuple[int, str]:
    """POST one request to the daemon's EST simpleenroll: (HTTP status, body)."""
    return _enrol_many(host, request, [der], label, person)[0]


_MARK = "@@ckms-check-status@@"


def _enrol_many(
    host, request, ders: list[bytes], label: str | None = None, person: str = OPERATOR
) -> list[tuple[int, str]]:
    """POST each request to the daemon's EST simpleenroll, in order: [(HTTP status, body)].

    An operator acts on the terminal as their own Linux account with their own credential (as
    ckms-enroll does; one SSH command for all requests); a controller person (admin-1, ...) through an
    SSH relay from the terminal, their key staying on the controller."""
    term = _terminal(request)
    path = f"/.well-known/est{'/' + label if label else ''}/simpleenroll"
    if not person.startswith("operator-") or term is None:
        cfg = _config(host)
        return [
            tls_post(
                host,
                person,
                cfg["public_host"],
                path,
                base64.b64encode(der),
                "application/pkcs10",
                cfg["est_port"],
                term,
            )
            for der in ders
        ]
    cred = f"{TERMINAL_PEOPLE}/{person}"
    curl = (
        f"curl -s -w '\\n{_MARK}%{{http_code}}\\n' --tlsv1.3 --max-time 20 --cacert /etc/ckms-terminal/ca.pem "
        f"--cert {cred}/cert.pem --key {cred}/key.pem -H 'Content-Type: application/pkcs10' "
        f'--data-binary @$d/r "$base{path}"'
    )
    posts = "; ".join(f"printf %s {base64.b64encode(der).decode()} >$d/r; {curl}" for der in ders)
    script = (
        ". /etc/ckms-terminal/est.conf; base=${EST_URL%/.well-known/est}; d=$(mktemp -d); "
        f"{posts}; rm -rf $d"
    )
    out = term.run(f"cd /tmp && runuser -u {person} -- sh -c {shlex.quote(script)}")
    parts = re.split(rf"\n?{_MARK}(\d+)\n", out.stdout)  # body, status, body, status, ..., ""
    got = [(int(parts[i + 1]), parts[i]) for i in range(0, len(parts) - 1, 2)]
    assert len(got) == len(ders), f"EST requests from the terminal: {out.stdout[-300:]} {out.stderr[-300:]}"
    return got


def _issued(status: int, body: str) -> x509.Certificate:
    assert status == 200, f"issuance through the daemon failed: HTTP {status} {body[:300]}"
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    return cert


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _policies(cert: x509.Certificate) -> list[str] | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return None
    return [p.policy_identifier.dotted_string for p in ext.value]


def _summary(cert: x509.Certificate) -> dict:
    key = cert.public_key()
    return {
        "serial": _serial(cert),
        "subject": cert.subject.rfc4514_string(),
        "signature_algorithm": cert.signature_algorithm_oid._name,
        "key": key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "policies": _policies(cert),
    }


def _profile_oid(host) -> str:
    cfg = _config(host)
    return cfg["profiles"][cfg["default_profile"]]["policy_oid"]


# ------------------------------------------------------------------------------------------- A.02
@pytest.mark.check("check:A.02.ca_key_generated_in_token")
def test_ca_key_generated_in_token(host, evidence):
    """The signing key is a PKCS#11 object generated in the token (CKA_LOCAL), never in the clear
    (ALWAYS_SENSITIVE), never exportable except wrapped under a custodian-held trusted key, and it is
    the key the CA certificate certifies."""
    got = _ca_key(host)
    attrs = got["attributes"]
    evidence.add("CA key object in the token", {k: got[k] for k in ("key_label", "module", "attributes")})
    evidence.add(
        "token public key == CA certificate's",
        {
            "equal": got["token_public_key"] == got["ca_cert_public_key"],
            "self-signature verifies under the token key": got[
                "ca_cert_self_signature_verifies_under_token_key"
            ],
        },
    )
    assert attrs["local"], f"A.02: the CA key was not generated in the token (CKA_LOCAL false): {attrs}"
    assert attrs["sensitive"] and attrs["always_sensitive"], (
        f"A.02: the CA key was once readable in the clear (CKA_ALWAYS_SENSITIVE false): {attrs}"
    )
    # NEVER_EXTRACTABLE, or extractable only wrapped under a CKA_TRUSTED key (the 2-of-3 backup, E.10-E.12)
    assert attrs["never_extractable"] or (attrs["extractable"] and attrs["wrap_with_trusted"]), (
        f"A.02: the CA key can leave the token other than wrapped under a trusted key: {attrs}"
    )
    assert got["token_public_key"] == got["ca_cert_public_key"], (
        "A.02: the CA certificate does not certify the key held in the token"
    )
    assert got["ca_cert_self_signature_verifies_under_token_key"], (
        "A.02: the CA certificate was not signed by the token's key"
    )


@pytest.mark.check("check:A.02.issue_requires_operator_role")
def test_issue_requires_operator_role(host, request, evidence):
    """An administrator and an authority, with their own valid client certificates, are refused issuance
    (and the refusals are in the trail under their names); the operator is served."""
    since = _since(host)
    refused = {}
    for person in (ADMIN, AUTHORITY):
        status, body = _enrol(host, request, _csr(_cn("a02-" + person.split("-")[0])), person=person)
        refused[person] = f"HTTP {status} {body[:200]}"
    op_cn = _cn("a02-op")
    status, body = _enrol(host, request, _csr(op_cn))
    time.sleep(1.0)  # the daemon's group-commit writer flushes within milliseconds
    recs = _trail(host, since)
    evidence.add("non-operators request issuance over EST with their own certificates", refused)
    evidence.add(f"{OPERATOR} requests issuance from the terminal", f"HTTP {status}")
    evidence.add(
        "trail since",
        _short(
            [r for r in recs if r["entity_id"] in (ADMIN, AUTHORITY, OPERATOR) or r["outcome"] == "denied"]
        ),
    )
    for person, seen in refused.items():
        assert seen.startswith(("HTTP 401", "HTTP 403")), (
            f"A.02: {person}'s issuance request was answered {seen}"
        )
        assert any(
            r["entity_id"] == person and r["outcome"] == "denied" and r["action"].startswith("certificate.")
            for r in recs
        ), f"A.02: {person}'s refused issuance is not in the trail under their name"
    assert status == 200, f"A.02: the operator's issuance request was answered {status}: {body[:300]}"
    assert any(
        r["entity_id"] == OPERATOR and r["action"] == "certificate.issue" and r["outcome"] == "success"
        for r in recs
    ), "A.02: the operator's issuance is not in the trail under their name"


# ------------------------------------------------------------------------------------------- A.05
@pytest.mark.check("check:A.05.policy_oid_in_issued_certs")
def test_policy_oid_in_issued_certs(host, request, evidence):
    """A certificate issued by the daemon carries exactly the configured policy OID, and a relying party
    that requires that policy (openssl verify -policy -explicit_policy) accepts the chain, one that
    requires another policy does not."""
    cfg = _config(host)
    oid = _profile_oid(host)
    role_oid = policy(host, "ckms_ca_policy_oid")
    cert = _issued(*_enrol(host, request, _csr(_cn("a05"))))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    ca = _ca_key(host)["ca_cert"]

    def verify(required: str):
        return host.run(
            f"d=$(mktemp -d) && printf %s {shlex.quote(pem)} >$d/c.pem && "
            f"openssl verify -policy {required} -explicit_policy -x509_strict -CAfile {active_ca_cert(host)} "
            "$d/c.pem 2>&1; rc=$?; rm -rf $d; exit $rc"
        )

    good, other = verify(oid), verify("1.3.6.1.4.1.99999.1")
    evidence.add(
        "configured policy OID",
        {
            "ckms.toml (default profile)": oid,
            "all profiles": {n: p["policy_oid"] for n, p in cfg["profiles"].items()},
            "ckms_ca_policy_oid (role)": role_oid,
        },
    )
    evidence.add("issued certificate", _summary(cert))
    evidence.add("CA certificate policies", ca["policies"])
    evidence.add("openssl verify requiring the configured policy", f"rc={good.rc} {good.stdout.strip()}")
    evidence.add("openssl verify requiring another policy", f"rc={other.rc} {other.stdout.strip()[-300:]}")
    evidence.add(
        "lint configuration",
        {"lint": cfg["lint_raw"], "note": "ckms-lint runs zlint's RFC/community lints; none names this OID"},
    )
    assert _policies(cert) == [oid], (
        f"A.05: issued certificate policies {_policies(cert)}, configured [{oid}]"
    )
    if role_oid:
        assert role_oid == oid, f"A.05: ckms.toml has {oid}, the role's ckms_ca_policy_oid is {role_oid}"
    assert ca["policies"] and oid in ca["policies"], f"A.05: the CA certificate does not assert {oid}"
    assert good.rc == 0, f"A.05: the chain does not validate for the configured policy: {good.stdout}"
    assert other.rc != 0, "A.05: the chain validates for a policy the CA never asserted"


@pytest.mark.check("check:A.05.csr_cannot_override_policy")
def test_csr_cannot_override_policy(host, request, evidence):
    """A request asking for other policies (a foreign OID and anyPolicy) in its extensionRequest is
    refused or gets only the configured OID."""
    oid = _profile_oid(host)
    asked = x509.CertificatePolicies(
        [
            x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), None),
            x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None),
        ]
    )
    status, body = _enrol(host, request, _csr(_cn("a05o"), extensions=[asked]))
    evidence.add("requested certificatePolicies", ["1.3.6.1.4.1.99999.7", "2.5.29.32.0 (anyPolicy)"])
    if status != 200:
        evidence.add("daemon's answer", f"HTTP {status} {body[:300]}")
        assert 400 <= status < 500, f"A.05: the request was neither issued nor refused as a request: {status}"
        return
    cert = _issued(status, body)
    evidence.add("issued certificate", _summary(cert))
    assert _policies(cert) == [oid], (
        f"A.05: the request changed the certificate's policies to {_policies(cert)} (configured [{oid}])"
    )


# ------------------------------------------------------------------------------------------- A.44
@pytest.mark.check("check:A.44.issued_cert_passes_lint")
def test_issued_cert_passes_lint(host, request, evidence):
    cert = _issued(*_enrol(host, request, _csr(_cn("a44"))))
    got = probe(host, "lint", "--serial", _serial(cert), script=STD)
    evidence.add("issued certificate", _summary(cert))
    evidence.add(
        "deployed ckms-lint on the stored certificate", {k: got[k] for k in got if k != "linter_info"}
    )
    evidence.add("linter", got["linter_info"])
    assert got["parse_error"] is None, (
        f"A.44: the linter cannot parse the issued certificate: {got['parse_error']}"
    )
    assert got["ok"] and not got["blocking"], f"A.44: lint errors on an issued certificate: {got['blocking']}"


@pytest.mark.check("check:A.44.crl_passes_lint")
def test_crl_passes_lint(host, evidence):
    """The full and the delta CRL the CRL listener serves now pass the deployed linter."""
    crl = probe(host, "crl", script=STD)
    got = {which: probe(host, "lint", "--crl", which, script=STD) for which in ("full", "delta")}
    evidence.add(
        "served full CRL", {k: crl[k] for k in ("url", "bytes", "issuer", "signature_algorithm", "entries")}
    )
    for which, report in got.items():
        evidence.add(
            f"deployed ckms-lint on the served {which} CRL",
            {k: report[k] for k in report if k != "linter_info"},
        )
    for which, report in got.items():
        assert report["parse_error"] is None, f"A.44: the served {which} CRL does not parse: {report}"
        assert report["ok"] and not report["blocking"], (
            f"A.44: lint errors on the {which} CRL: {report['blocking']}"
        )


@pytest.mark.check("check:A.44.malformed_csr_rejected")
def test_malformed_csr_rejected(host, request, evidence):
    """Garbage, a truncated request and a request whose signature does not verify are refused with an
    EST error naming the problem, and no certificate is stored for them."""
    cn = _cn("a44m")
    good = _csr(cn)
    cases = {
        "garbage DER": b"\x30\x82\x01\x00" + bytes(range(256)),
        "truncated request": good[: len(good) // 2],
        "signature does not verify": _bad_signature(cn),
    }
    before = probe(host, "certs", "--count-only", script=STD)["count"]
    answers = dict(zip(cases, _enrol_many(host, request, list(cases.values())), strict=True))
    counted = probe(host, "certs", "--count-only", "--subject-contains", cn, script=STD)
    stored, after = counted["matching"], counted["count"]
    evidence.add("answers", {n: f"HTTP {s} {b[:240]}" for n, (s, b) in answers.items()})
    evidence.add(
        "certificates stored (all / for the check's CN)",
        {"before": before, "after": after, f"CN={cn}": stored, "note": "others may issue meanwhile"},
    )
    for name, (status, body) in answers.items():
        assert 400 <= status < 500, f"A.44: {name}: answered HTTP {status}, not refused"
        assert re.search(r"PKCS#10|DER|request|signature|csr_", body, re.I), (
            f"A.44: {name}: refusal without a reason: {body[:200]!r}"
        )
    assert stored == 0, f"A.44: a certificate was stored for the malformed request ({stored})"


# ------------------------------------------------------------------------------------------- A.52
@pytest.mark.check("check:A.52.cert_and_crl_signed_via_pkcs11")
def test_cert_and_crl_signed_via_pkcs11(host, request, evidence):
    """The issued certificate and the served CRL verify under the public key of the token's CA key object
    (read through PKCS#11), and the daemon's processes have the token's PKCS#11 module mapped."""
    cert = _issued(*_enrol(host, request, _csr(_cn("a52"))))
    signed = probe(host, "signed", "--serial", _serial(cert), script=STD)
    crl = probe(host, "crl", script=STD)
    key = _ca_key(host)
    module = key["module"]
    real = host.run(f"readlink -f {shlex.quote(module)}").stdout.strip()
    # every process of the unit (supervisor, workers, lint helper): its command line, then 1 if mapped
    listing = host.run(
        "for p in $(grep -l 'ckms-ca.service$' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3); do "
        "printf '%s %s\\t' $p \"$(tr '\\0' ' ' </proc/$p/cmdline | cut -c1-80)\"; "
        f"grep -cF -e {shlex.quote(module)} -e {shlex.quote(real)} /proc/$p/maps; done"
    ).stdout
    mapped = {
        line.split("\t")[0].strip(): line.split("\t")[1].strip() not in ("", "0")
        for line in listing.splitlines()
        if "\t" in line
    }
    signers = [p for p, has in mapped.items() if has and " ca serve" in p]
    evidence.add("issued certificate under the token key", signed)
    evidence.add(
        "served CRL under the token key",
        {
            k: crl[k]
            for k in ("url", "signature_algorithm", "verifies_under_token_key", "verifies_under_ca_cert")
        },
    )
    evidence.add("PKCS#11 module", {"configured": module, "resolved": real})
    evidence.add("daemon processes with the module mapped", mapped)
    assert signed["verifies_under_token_key"], (
        "A.52: the issued certificate does not verify under the token key"
    )
    assert crl["verifies_under_token_key"], "A.52: the served CRL does not verify under the token key"
    assert signers, f"A.52: no daemon process of ckms-ca has the PKCS#11 module {module} mapped: {mapped}"


# ------------------------------------------------------------------------------------------- A.54
@pytest.mark.check("check:A.54.only_cryptrec_algorithms_accepted")
def test_only_cryptrec_algorithms_accepted(host, request, evidence):
    """Requests with keys or signatures outside the CRYPTREC list are refused; a P-256/SHA-256 request
    from the same operator (control) is served."""
    tag = _cn("a54")
    cases = {
        "RSA-1024 key": _csr(tag + "-rsa", rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "EC secp256k1 key": _csr(tag + "-k1", ec.generate_private_key(ec.SECP256K1())),
        "EC brainpoolP256r1 key": _csr(tag + "-bp", ec.generate_private_key(ec.BrainpoolP256R1())),
        "ecdsa-with-SHA1 signature": _sha1_csr(tag + "-sha1"),
    }
    *got, control = _enrol_many(host, request, [*cases.values(), _csr(tag + "-ok")])
    answers = dict(zip(cases, got, strict=True))
    stored = probe(host, "certs", "--count-only", "--subject-contains", tag, script=STD)["matching"]
    evidence.add("answers", {n: f"HTTP {s} {b[:240]}" for n, (s, b) in answers.items()})
    evidence.add("control (P-256, SHA-256)", f"HTTP {control[0]}")
    evidence.add("certificates stored for the check's names (control only expected)", stored)
    accepted = [name for name, (status, _b) in answers.items() if not 400 <= status < 500]
    assert not accepted, f"A.54: requests with non-listed algorithms were not refused: {accepted}"
    assert control[0] == 200, f"A.54: the control request (P-256, SHA-256) was not served: {control}"
    assert stored == 1, f"A.54: {stored} certificates stored for the check's names (1 expected: the control)"


# ------------------------------------------------------------------------------------------- A.59
@pytest.mark.check("check:A.59.p256_and_p384_profiles_selectable")
def test_p256_and_p384_profiles_selectable(host, request, evidence):
    """The configured profile offers P-256 and P-384, the token generates keys of both sizes, and the
    daemon issues for a P-256 (SHA-256) and a P-384 (SHA-384) request, the profile named by its EST label."""
    cfg = _config(host)
    name = cfg["default_profile"]
    offered = cfg["profiles"][name]["allowed_curves"]
    mech = probe(host, "mechanisms", script=STD)
    requests = {
        "P-256": _csr(_cn("a59-256"), ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
        "P-384": _csr(_cn("a59-384"), ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    }
    answers = _enrol_many(host, request, list(requests.values()), label=name)
    got = {
        curve: _summary(_issued(status, body)) if status == 200 else f"HTTP {status} {body[:200]}"
        for curve, (status, body) in zip(requests, answers, strict=True)
    }
    evidence.add("profiles and their curves", {n: p["allowed_curves"] for n, p in cfg["profiles"].items()})
    evidence.add("CA signing curve (ckms.toml [ca] curve)", cfg["ca_curve"])
    evidence.add("token EC mechanisms (key sizes)", mech)
    evidence.add(f"issued through EST label {name!r}", got)
    assert {"P-256", "P-384"} <= set(offered), f"A.59: profile {name} offers only {offered}"
    gen = mech["EC_KEY_PAIR_GEN"]
    assert gen["min_key_length"] <= 256 and gen["max_key_length"] >= 384, (
        f"A.59: the token cannot generate both P-256 and P-384 keys: {gen}"
    )
    for curve, want in (("P-256", "secp256r1"), ("P-384", "secp384r1")):
        assert isinstance(got[curve], dict), f"A.59: a {curve} request was refused: {got[curve]}"
        assert got[curve]["key"] == want, f"A.59: {curve} request got a {got[curve]['key']} certificate"
    evidence.limit(
        "the CA's own signing curve is chosen at the key ceremony (ckms_ca_curve); switching the CA "
        "itself to P-384 (a new CA key) is not exercised on the live CA"
    )


# ------------------------------------------------------------------------------------------- A.62
@pytest.mark.check("check:A.62.only_listed_algorithms_in_use")
def test_only_listed_algorithms_in_use(host, request, evidence):
    """CA certificate, daemon TLS certificate, every certificate the CA holds, a fresh one and the served
    CRL use only ECDSA P-256/SHA-256 or P-384/SHA-384; the TLS groups and suites configured are the
    guidance's (what TLS actually negotiates: A.61/A.64)."""
    cfg = _config(host)
    ca = _ca_key(host)["ca_cert"]
    fresh = _issued(*_enrol(host, request, _csr(_cn("a62"))))
    held = probe(host, "certs", script=STD)
    crl = probe(host, "crl", script=STD)
    evidence.add("CA certificate", ca)
    evidence.add("daemon TLS certificate", cfg["tls_cert"])
    evidence.add("fresh certificate", _summary(fresh))
    evidence.add("certificates held (kind|signature|key: count)", held["summary"])
    evidence.add("served CRL signature", crl["signature_algorithm"])
    evidence.add("TLS configuration", {"groups": cfg["tls_groups"], "suites": cfg["tls_ciphersuites"]})
    certs = [("CA certificate", ca), ("TLS certificate", cfg["tls_cert"])]
    certs += [(f"stored {r['kind']} {r['db_serial']}", r) for r in held["rows"]]
    bad = [
        (what, c["signature_algorithm"], c["key"])
        for what, c in certs
        if c["signature_algorithm"] not in ALLOWED_SIG or c["key"].get("curve") not in ALLOWED_CURVES
    ]
    assert not bad, f"A.62: certificates with algorithms outside the list: {bad[:20]}"
    assert CURVE_HASH[ca["key"]["curve"]] == ca["signature_algorithm"], (
        f"A.62: the CA key {ca['key']} signs with {ca['signature_algorithm']} (RFC 5758 pairs)"
    )
    assert _summary(fresh)["signature_algorithm"] == ca["signature_algorithm"], _summary(fresh)
    assert crl["signature_algorithm"] == ca["signature_algorithm"], (
        f"A.62: the CRL is signed with {crl['signature_algorithm']}"
    )
    assert set(cfg["tls_groups"]) <= ALLOWED_TLS_GROUPS, f"A.62: TLS groups {cfg['tls_groups']}"
    assert set(cfg["tls_ciphersuites"]) <= ALLOWED_TLS_SUITES, f"A.62: TLS suites {cfg['tls_ciphersuites']}"


@pytest.mark.check("check:A.62.p256_validity_not_beyond_2040")
def test_p256_validity_not_beyond_2040(host, evidence):
    """No certificate the CA holds that uses P-256 (its key, or a P-256/SHA-256 signature) is valid beyond
    2040-12-31, and no profile can issue beyond it: end-entity validity is now + validity_days, capped by
    the CA certificate's notAfter (checked on the certificates held)."""
    cfg = _config(host)
    ca = _ca_key(host)["ca_cert"]
    held = probe(host, "certs", script=STD)
    now = dt.datetime.now(dt.UTC)
    ca_end = dt.datetime.fromisoformat(ca["not_after"])
    uses_p256 = ca["key"].get("curve") == "secp256r1"

    def p256(c: dict) -> bool:
        return c["key"].get("curve") == "secp256r1" or c["signature_algorithm"] == "ecdsa-with-SHA256"

    beyond = [
        (c.get("db_serial", "CA"), c["not_after"])
        for c in [ca, cfg["tls_cert"], *held["rows"]]
        if p256(c) and dt.datetime.fromisoformat(c["not_after"]) > P256_END
    ]
    above_ca = [(r["db_serial"], r["not_after"]) for r in held["rows"] if r["not_after"] > ca["not_after"]]
    reach = {
        n: min(now + dt.timedelta(days=p["validity_days"]), ca_end).isoformat()
        for n, p in cfg["profiles"].items()
    }
    ceremony_days = policy(host, "ckms_ca_validity_days")
    ceremony_curve = policy(host, "ckms_ca_curve")
    evidence.add("CA certificate", {k: ca[k] for k in ("key", "signature_algorithm", "not_after")})
    evidence.add("latest notAfter of the certificates held", held["latest_not_after"])
    evidence.add("furthest notAfter each profile can issue today", reach)
    evidence.add(
        "a new CA by the role", {"ckms_ca_curve": ceremony_curve, "ckms_ca_validity_days": ceremony_days}
    )
    assert not beyond, f"A.62: P-256 certificates valid beyond 2040-12-31: {beyond[:20]}"
    assert not above_ca, f"A.62: certificates outlive the CA certificate: {above_ca[:20]}"
    if uses_p256:
        late = {n: t for n, t in reach.items() if dt.datetime.fromisoformat(t) > P256_END}
        assert not late, f"A.62: profiles can issue P-256-signed certificates beyond 2040: {late}"
    if ceremony_curve == "P-256" and ceremony_days:
        assert now + dt.timedelta(days=int(ceremony_days)) <= P256_END, (
            f"A.62: a P-256 CA made today by the role would be valid {ceremony_days} days, beyond 2040"
        )


# ------------------------------------------------------------------------------------- A.61 / A.64
def _s_client(host, request):
    """openssl s_client toward the daemon's EST listener, from the terminal (else the CA host)."""
    cfg = _config(host)
    term = _terminal(request)
    client = term or host
    target = f"{cfg['public_host']}:{cfg['est_port']}"

    def run(options: str) -> dict:
        out = client.run(f"openssl s_client -connect {target} -brief {options} </dev/null 2>&1")
        text = out.stdout
        suite = re.search(r"Ciphersuite: (\S+)", text)
        proto = re.search(r"Protocol version: (\S+)", text)
        group = re.search(r"(?:Server|Peer) Temp Key: ([^\n]+)", text)
        return {
            "rc": out.rc,
            "protocol": proto.group(1) if proto else None,
            "suite": suite.group(1) if suite else None,
            "key_exchange": group.group(1).strip() if group else None,
            "output": text.strip()[-240:],
        }

    return run, f"{'terminal' if term else 'the CA host'} -> {target}"


def _accepted(r: dict) -> bool:
    return r["rc"] == 0 and r["suite"] is not None


TLS13_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)


@pytest.mark.check("check:A.61.tls_negotiates_only_allowed_suites")
def test_tls_negotiates_only_allowed_suites(host, request, evidence):
    """Each TLS 1.3 suite offered alone is accepted exactly when the configuration and the guidance
    allow it, and a client offering everything negotiates an allowed suite and group."""
    cfg = _config(host)
    run, where = _s_client(host, request)
    allowed = set(cfg["tls_ciphersuites"]) & ALLOWED_TLS_SUITES
    got = {s: run(f"-tls1_3 -ciphersuites {s}") for s in TLS13_SUITES}
    default = run("-ciphersuites " + ":".join(TLS13_SUITES))
    evidence.add("client", where)
    evidence.add(
        "each suite alone", {s: {k: v for k, v in r.items() if k != "output"} for s, r in got.items()}
    )
    evidence.add("all suites offered", default)
    wrong = {s: r["suite"] for s, r in got.items() if _accepted(r) != (s in allowed)}
    assert not wrong, f"A.61: suites accepted/refused contrary to the allowed set {sorted(allowed)}: {wrong}"
    assert _accepted(default) and default["suite"] in allowed, f"A.61: negotiated {default['suite']}"
    assert default["key_exchange"] and re.search(r"prime256v1|secp384r1", default["key_exchange"]), (
        f"A.61: negotiated key exchange {default['key_exchange']}"
    )


@pytest.mark.check("check:A.64.tls13_only")
def test_tls13_only(host, request, evidence):
    run, where = _s_client(host, request)
    got = {
        "TLS 1.2 only": run("-tls1_2"),
        "TLS 1.2 or lower (no TLS 1.3)": run("-no_tls1_3"),
        "default client": run(""),
    }
    evidence.add("client", where)
    evidence.add("handshakes", got)
    assert not _accepted(got["TLS 1.2 only"]), f"A.64: TLS 1.2 was accepted: {got['TLS 1.2 only']}"
    assert not _accepted(got["TLS 1.2 or lower (no TLS 1.3)"]), "A.64: a pre-1.3 handshake was accepted"
    assert _accepted(got["default client"]) and got["default client"]["protocol"] == "TLSv1.3", (
        f"A.64: a default client did not get TLS 1.3: {got['default client']}"
    )


@pytest.mark.check("check:A.64.ecdhe_p256_key_exchange")
def test_ecdhe_p256_key_exchange(host, request, evidence):
    """X25519, X448 and finite-field DH are refused; P-256 alone is accepted, and a client preferring
    X25519 (openssl's default) ends on ECDH P-256."""
    run, where = _s_client(host, request)
    refused = {g: run(f"-tls1_3 -groups {g}") for g in ("X25519", "X448", "ffdhe2048")}
    p256 = run("-tls1_3 -groups P-256")
    default = run("-tls1_3 -groups X25519:P-256:P-384")
    evidence.add("client", where)
    evidence.add("refused groups", refused)
    evidence.add("P-256 only", p256)
    evidence.add("client offering X25519:P-256:P-384", default)
    accepted = [g for g, r in refused.items() if _accepted(r)]
    assert not accepted, f"A.64: key exchange groups outside ECDH P-256/P-384 accepted: {accepted}"
    assert _accepted(p256) and "prime256v1" in (p256["key_exchange"] or ""), f"A.64: P-256 refused: {p256}"
    assert _accepted(default) and "prime256v1" in (default["key_exchange"] or ""), (
        f"A.64: a client offering X25519 first ended on {default['key_exchange']}, not ECDH P-256"
    )
