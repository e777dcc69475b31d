"""Self-tests (E.32, E.35–E.37, F.24): known answers, HSM pairwise test, code and config integrity.

Run by every daemon worker at start, on demand (``ckms selftest``, ``POST /api/v1/admin/selftest``)
and before an administrator clears the error state (``ckms ca recover``).

* Known-answer tests: SHA-256 and SHA-384 of "abc" (FIPS 180-4 examples) and an ECDSA P-256
  signature verification (RFC 6979 A.2.5, message "sample"), plus the same signature with one bit
  flipped, which must *fail*, so a verifier that accepts everything is caught too.
* Pairwise test: the token signs a fresh random message with the CA key; the CA certificate's
  public key must verify it.
* Integrity: SHA-256 of every installed ``ckms_app/*.py``, the ``ckms-lint`` binary and
  ``ckms.toml`` against ``selftest-manifest.json`` in the CA home. The manifest is written by
  ``ca init`` and, after an upgrade, by an administrator with ``ckms selftest --record``; it is
  signed by the CA key in the HSM, so editing the manifest to match a tampered file is detected.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ckms_app.algorithms import curve_of
from ckms_app.authority.linter import find_linter_binary
from ckms_app.config import Config
from ckms_app.errors import CkmsError, LintUnavailable
from ckms_app.hsm.token import HsmEcPrivateKey, pairwise_consistent

MANIFEST_NAME = "selftest-manifest.json"
MANIFEST_FORMAT = "ckms-selftest-manifest/1"
CODE_DIR = Path(__file__).resolve().parent.parent  # the ckms_app package

_SHA_KATS = (
    ("sha256", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        "sha384",
        b"abc",
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
    ),
)


# RFC 6979, A.2.5: P-256, SHA-256, message "sample".
@dataclass(frozen=True)
class _EcdsaKat:
    x: int
    y: int
    r: int
    s: int
    message: bytes


_ECDSA_KAT = _EcdsaKat(
    x=0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6,
    y=0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299,
    r=0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
    s=0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    message=b"sample",
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def reason(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failures()) or "all self-tests passed"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def known_answer_tests() -> list[Check]:
    out = []
    for name, message, expected in _SHA_KATS:
        got = hashlib.new(name, message).hexdigest()
        out.append(Check(f"kat.{name}", got == expected, "ok" if got == expected else f"got {got[:16]}…"))
    kat = _ECDSA_KAT
    public = ec.EllipticCurvePublicNumbers(kat.x, kat.y, ec.SECP256R1()).public_key()
    good = encode_dss_signature(kat.r, kat.s)
    bad = encode_dss_signature(kat.r, kat.s ^ 1)
    try:
        public.verify(good, kat.message, ec.ECDSA(hashes.SHA256()))
        accepted_good = True
    except InvalidSignature:
        accepted_good = False
    try:
        public.verify(bad, kat.message, ec.ECDSA(hashes.SHA256()))
        rejected_bad = False
    except InvalidSignature:
        rejected_bad = True
    ok = accepted_good and rejected_bad
    detail = (
        "ok" if ok else ("valid signature rejected" if not accepted_good else "invalid signature accepted")
    )
    out.append(Check("kat.ecdsa_p256_verify", ok, detail))
    return out


def _ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CkmsError("the CA certificate does not carry an EC public key")
    return key


def pairwise_test(key: HsmEcPrivateKey, ca_cert: x509.Certificate) -> Check:
    try:
        ok = pairwise_consistent(key.sign_digest, _ec_public_key(ca_cert), key.curve_info.hash_algorithm)
    except CkmsError as exc:
        return Check("hsm.pairwise", False, f"the token did not sign: {exc}")
    if not ok:
        return Check("hsm.pairwise", False, "the token's signature does not verify under the CA certificate")
    return Check("hsm.pairwise", True, "ok")


# --- integrity ----------------------------------------------------------------------------------
def _lint_binary(config: Config) -> Path | None:
    if not config.lint_enabled:
        return None

    try:
        return find_linter_binary(config.lint_binary)
    except LintUnavailable:
        return None


def installed_files(config: Config) -> dict[str, Path]:
    """What the manifest covers, by a stable name: the code, the linter, the configuration, the CA certificates."""
    # Every module of the installed package, subpackages included (code/authority/issuance.py, ...).
    files = {f"code/{p.relative_to(CODE_DIR).as_posix()}": p for p in sorted(CODE_DIR.rglob("*.py"))}
    lint = _lint_binary(config)
    if lint is not None:
        files["lint/ckms-lint"] = lint
    files["config/ckms.toml"] = config.home / "ckms.toml"
    # Every key generation's CA certificate and links: each is a trust anchor of the daemon's mutual TLS and
    # goes to relying parties (ckms ca trust, /cacerts), so a swapped one must fail the self-test.
    for generation in config.generations():
        files[f"ca/generation-{generation.generation}/ca.pem"] = generation.cert
        if generation.links is not None:
            files[f"ca/generation-{generation.generation}/links.pem"] = generation.links
    return files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in body.items() if k != "signature"}, sort_keys=True, separators=(",", ":")
    ).encode()


def record_manifest(config: Config, key: HsmEcPrivateKey, recorded_by: str) -> Path:
    """Hash the installed files and sign the manifest with the CA key."""
    body: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "recorded_by": recorded_by,
        "code_dir": str(CODE_DIR),
        "files": {name: _sha256_file(path) for name, path in installed_files(config).items()},
    }
    signature = key.sign(_canonical(body), ec.ECDSA(key.curve_info.hash_algorithm))
    body["signature"] = base64.b64encode(signature).decode()
    path = config.home / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def integrity_test(config: Config, ca_cert: x509.Certificate) -> Check:
    path = config.home / MANIFEST_NAME
    try:
        body = json.loads(path.read_text())
        signature = base64.b64decode(body["signature"])
    except FileNotFoundError:
        return Check("integrity", False, f"no manifest at {path}: record one with 'ckms selftest --record'")
    except (ValueError, KeyError):
        return Check("integrity", False, f"{path} is not a readable manifest")
    try:
        # record_manifest signs with the key's own curve hash, whatever hash signed the CA certificate (a
        # P-256 CA under a SHA-384 external root): verify with the same one
        public_key = _ec_public_key(ca_cert)
        public_key.verify(signature, _canonical(body), ec.ECDSA(curve_of(public_key).hash_algorithm))
    except (InvalidSignature, TypeError):
        return Check("integrity", False, "the manifest's signature does not verify under the CA certificate")
    expected: dict[str, str] = body.get("files", {})
    actual = installed_files(config)
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name} missing")
        elif name not in expected:
            problems.append(f"{name} not in the manifest")
        elif _sha256_file(actual[name]) != expected[name]:
            problems.append(f"{name} modified")
    if problems:
        return Check("integrity", False, ", ".join(problems[:8]) + (" …" if len(problems) > 8 else ""))
    return Check("integrity", True, f"{len(expected)} files match the manifest")


def run_all(
    config: Config,
    key: HsmEcPrivateKey | None,
    ca_cert: x509.Certificate,
    retired: Sequence[tuple[int, HsmEcPrivateKey, x509.Certificate]] = (),
) -> Report:
    """Every self-test: the known answers, each signing key against its CA certificate (the active one and
    every retired one, which still signs CRLs), and the integrity of the installed files."""
    report = Report(known_answer_tests())
    if key is None:
        report.checks.append(Check("hsm.pairwise", False, "the CA key is not available in the token"))
    else:
        report.checks.append(pairwise_test(key, ca_cert))
    for generation, retired_key, retired_cert in retired:
        check = pairwise_test(retired_key, retired_cert)
        report.checks.append(Check(f"hsm.pairwise.g{generation}", check.ok, check.detail))
    report.checks.append(integrity_test(config, ca_cert))
    return report
