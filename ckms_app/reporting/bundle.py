"""The signed report bundle: its manifest, and the check a reviewer runs with only public material.

A report bundle is a directory: the hardening report, its evidence and ``provenance.json``. On the CA
host ``ckms report sign`` (:mod:`ckms_app.reporting.signing`) lists every file with its SHA-256 and size
in ``manifest.json``, has the HSM audit key (the key that seals the audit trail) sign the manifest's
exact bytes into ``manifest.sig``, and appends an ``audit.report`` record holding the manifest's digest
to the trail, sealed at once. ``audit-record.json`` carries that record, the records after it up to the
seal, and the seal: recomputing the chain from the record to the seal and checking the seal's signature
shows the record is in the sealed trail, without the database.

:func:`verify_bundle` needs no token and no database: the bundle and a trust anchor, either the audit
public key (``--audit-key``) or the CA certificate (``--ca-cert``, which certifies the audit key in
``audit-key.cert.pem``). The signature is a plain DER ECDSA signature over ``manifest.json``, so
``openssl dgst -sha256 -verify audit-key.pub.pem -signature manifest.sig manifest.json`` checks it too.

Why this module is long: the reviewer's whole check (files, signature, trust anchor, the audit record's
place in the sealed chain) reads top to bottom in one place, so it can be audited on its own.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.algorithms import curve_of
from ckms_app.audit.seals import seal_message
from ckms_app.errors import BundleError
from ckms_app.store.chain import AUDIT_FIELDS, audit_record_hash

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
AUDIT_RECORD = "audit-record.json"
AUDIT_KEY_PEM = "audit-key.pub.pem"
AUDIT_KEY_CERT = "audit-key.cert.pem"
CA_CERT = "ca-cert.pem"
PROVENANCE = "provenance.json"
# Written by the signing, so not listed in the manifest: everything else in the bundle is.
SIGNATURE_FILES = frozenset({MANIFEST, SIGNATURE, AUDIT_RECORD, AUDIT_KEY_PEM, AUDIT_KEY_CERT, CA_CERT})
MANIFEST_FORMAT = "ckms-report-manifest/1"
RECORD_FORMAT = "ckms-report-audit-record/1"
REPORT_ACTION = "audit.report"


# --- the manifest ---------------------------------------------------------------------------------
def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def scan(bundle: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every regular file of the bundle except the signature files, as sorted manifest entries, and the
    paths that are not regular files (symbolic links, devices): a bundle holds plain files only, so a
    link cannot make the manifest describe one file while a reader opens another."""
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a directory")
    entries: list[dict[str, Any]] = []
    irregular: list[str] = []
    for root, dirs, files in os.walk(bundle, followlinks=False):
        base = Path(root)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                irregular.append((base / name).relative_to(bundle).as_posix())
        for name in sorted(files):
            path = base / name
            rel = path.relative_to(bundle).as_posix()
            if rel in SIGNATURE_FILES:
                continue
            if path.is_symlink() or not path.is_file():
                irregular.append(rel)
                continue
            digest, size = sha256_file(path)
            entries.append({"path": rel, "sha256": digest, "size": size})
    entries.sort(key=lambda e: str(e["path"]))
    return entries, sorted(irregular)


def run_id_of(bundle: Path) -> str | None:
    """The run ID of ``provenance.json``, if the bundle has one that names it."""
    path = bundle / PROVENANCE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("run_id")
    except (ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: not a JSON object ({exc})") from None
    return None if value is None else str(value)


def draft_manifest(bundle: Path) -> dict[str, Any]:
    """The unsigned manifest of a bundle directory: run ID and every file's SHA-256 and size."""
    entries, irregular = scan(bundle)
    if irregular:
        raise BundleError(f"{bundle}: not regular files (links or devices): {', '.join(irregular)}")
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id_of(bundle),
        "created_at": iso_now(),
        "files": entries,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as written and signed: sorted keys, two-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def load_manifest(data: bytes, where: str = MANIFEST) -> dict[str, Any]:
    """A manifest read back, its shape checked (format, file entries) before anything trusts it."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{where}: not a {MANIFEST_FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and isinstance(f.get("sha256"), str)
        and isinstance(f.get("size"), int)
        for f in files
    ):
        raise BundleError(f"{where}: 'files' must be a list of {{path, sha256, size}}")
    for entry in files:
        rel = entry["path"]
        parts = rel.split("/")
        if rel.startswith("/") or "" in parts or "." in parts or ".." in parts or rel in SIGNATURE_FILES:
            raise BundleError(f"{where}: {rel!r} is not a plain relative path of a bundle file")
    return manifest


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (DER): what the manifest names the audit key by."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_ec_public_key(data: bytes, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BundleError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BundleError(f"{where}: the audit key is an EC key, not {type(key).__name__}")
    return key


def load_certificate(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise BundleError(f"{where}: not a PEM certificate ({exc})") from None


# --- verification ---------------------------------------------------------------------------------
@dataclass
class BundleReport:
    """What :func:`verify_bundle` found: ``problems`` empty means the bundle is intact and signed."""

    bundle: str
    anchor: str = ""
    run_id: str | None = None
    files: int = 0
    manifest_sha256: str = ""
    audit_key_sha256: str = ""
    record_seq: int | None = None
    sealed_up_to: int | None = None
    signed_by: str = ""
    signed_at: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundle": self.bundle,
            "anchor": self.anchor,
            "run_id": self.run_id,
            "files": self.files,
            "manifest_sha256": self.manifest_sha256,
            "audit_key_sha256": self.audit_key_sha256,
            "audit_record_seq": self.record_seq,
            "sealed_up_to_seq": self.sealed_up_to,
            "signed_by": self.signed_by,
            "signed_at": self.signed_at,
            "problems": list(self.problems),
        }


def verify_bundle(
    bundle: Path,
    *,
    audit_key: ec.EllipticCurvePublicKey | None = None,
    ca_cert: x509.Certificate | None = None,
) -> BundleReport:
    """Check a signed bundle against a trust anchor the reviewer holds, naming every problem found.

    In order: the anchor gives the audit key (given directly, or certified by the given CA certificate
    in ``audit-key.cert.pem``); the manifest's signature; every listed file's presence, size and hash;
    no unlisted file; the ``audit.report`` record holds the manifest's digest, and the chain from it to
    the seal recomputes and the seal's signature verifies. Nothing in the bundle is trusted before the
    signature over the manifest has been checked against the anchor."""
    if (audit_key is None) == (ca_cert is None):
        raise BundleError("give exactly one trust anchor: the audit public key or the CA certificate")
    report = BundleReport(bundle=str(bundle))
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a directory")
    manifest_path, sig_path = bundle / MANIFEST, bundle / SIGNATURE
    for path in (manifest_path, sig_path):
        if not path.is_file():
            report.problems.append(f"{path.name} is missing: the bundle is not signed")
    if report.problems:
        return report
    data = manifest_path.read_bytes()
    report.manifest_sha256 = hashlib.sha256(data).hexdigest()
    try:
        manifest = load_manifest(data)
    except BundleError as exc:
        report.problems.append(str(exc))
        manifest = None
    signer = manifest.get("signer") if isinstance(manifest, dict) else None
    signer = signer if isinstance(signer, dict) else {}
    key = _anchor_key(bundle, report, signer, audit_key, ca_cert)
    if key is not None:
        report.audit_key_sha256 = key_id(key)
        try:
            key.verify(sig_path.read_bytes(), data, ec.ECDSA(curve_of(key).hash_algorithm))
        except (InvalidSignature, ValueError):
            report.problems.append(
                f"{SIGNATURE} does not verify over {MANIFEST} with the audit key "
                f"{report.audit_key_sha256[:16]}…: the manifest or the signature was changed"
            )
        if signer and signer.get("audit_key_sha256") != report.audit_key_sha256:
            report.problems.append(
                f"the manifest names audit key {str(signer.get('audit_key_sha256'))[:16]}…, "
                f"not the anchor's {report.audit_key_sha256[:16]}…"
            )
    if manifest is None:
        return report
    report.run_id = manifest.get("run_id")
    report.signed_by = str(signer.get("signed_by", ""))
    report.signed_at = str(signer.get("signed_at", ""))
    if not signer:
        report.problems.append(f"{MANIFEST} has no signer section: it is a draft, not a signed manifest")
    _check_files(bundle, manifest["files"], report)
    if key is not None:
        _check_public_files(bundle, report, signer, key)
        _check_audit_record(bundle, report, key, str(signer.get("audit_key_label", "")))
    return report


def _check_public_files(
    bundle: Path, report: BundleReport, signer: dict[str, Any], key: ec.EllipticCurvePublicKey
) -> None:
    """The key and certificates shipped beside the manifest are exactly the ones the signed manifest
    names, byte for byte: a changed byte in any file of the bundle fails, signed or not."""
    pub = bundle / AUDIT_KEY_PEM
    if not pub.is_file() or pub.read_bytes() != public_pem(key):
        report.problems.append(f"{AUDIT_KEY_PEM} is missing or is not the audit key that signed the manifest")
    ca_cert = _exact_certificate(bundle / CA_CERT, report)
    if ca_cert is not None and cert_sha256(ca_cert) != signer.get("ca_cert_sha256"):
        report.problems.append(f"{CA_CERT} is not the CA certificate the manifest names")
        ca_cert = None
    audit_cert = _exact_certificate(bundle / AUDIT_KEY_CERT, report)
    if audit_cert is None:
        return
    if audit_cert.public_key() != key or format(audit_cert.serial_number, "x") != signer.get(
        "audit_key_cert_serial"
    ):
        report.problems.append(f"{AUDIT_KEY_CERT} is not the audit key certificate the manifest names")
    elif ca_cert is not None:
        try:
            audit_cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            report.problems.append(f"{AUDIT_KEY_CERT} is not issued by {CA_CERT} ({exc})")


def _exact_certificate(path: Path, report: BundleReport) -> x509.Certificate | None:
    """A certificate file of the bundle, which must be the certificate's own PEM and nothing else."""
    if not path.is_file():
        report.problems.append(f"{path.name} is missing")
        return None
    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        report.problems.append(f"{path.name}: not a PEM certificate ({exc})")
        return None
    if cert.public_bytes(serialization.Encoding.PEM) != data:
        report.problems.append(f"{path.name}: not the certificate's exact PEM (the file was changed)")
        return None
    return cert


def _anchor_key(
    bundle: Path,
    report: BundleReport,
    signer: dict[str, Any],
    audit_key: ec.EllipticCurvePublicKey | None,
    ca_cert: x509.Certificate | None,
) -> ec.EllipticCurvePublicKey | None:
    """The audit key to check the bundle with: the reviewer's own, or the one their CA certificate
    certifies; the bundle's ``audit-key.pub.pem`` is never taken on its own word."""
    if audit_key is not None:
        report.anchor = f"audit key {key_id(audit_key)[:16]}… (given)"
        return audit_key
    if ca_cert is None:
        raise BundleError("give exactly one trust anchor: the audit public key or the CA certificate")
    report.anchor = f"CA certificate {ca_cert.subject.rfc4514_string()} ({cert_sha256(ca_cert)[:16]}…)"
    if signer and signer.get("ca_cert_sha256") != cert_sha256(ca_cert):
        report.problems.append(
            f"the bundle was signed for CA certificate {str(signer.get('ca_cert_sha256'))[:16]}…, "
            f"not the given one ({cert_sha256(ca_cert)[:16]}…)"
        )
    path = bundle / AUDIT_KEY_CERT
    if not path.is_file():
        report.problems.append(
            f"{AUDIT_KEY_CERT} is missing: nothing ties the audit key to the CA certificate "
            "(verify with --audit-key instead)"
        )
        return None
    try:
        cert = load_certificate(path.read_bytes(), AUDIT_KEY_CERT)
        cert.verify_directly_issued_by(ca_cert)
    except (BundleError, ValueError, TypeError, InvalidSignature) as exc:
        report.problems.append(f"{AUDIT_KEY_CERT} is not issued by the given CA certificate ({exc})")
        return None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        report.problems.append(f"{AUDIT_KEY_CERT} does not hold an EC key")
        return None
    return key


def _check_files(bundle: Path, listed: Iterable[dict[str, Any]], report: BundleReport) -> None:
    present, irregular = scan(bundle)
    by_path = {e["path"]: e for e in present}
    wanted = {e["path"]: e for e in listed}
    report.files = len(wanted)
    for rel in irregular:
        report.problems.append(f"{rel}: not a regular file (a link or device) in the bundle")
    for rel in sorted(wanted.keys() - by_path.keys()):
        if rel not in irregular:
            report.problems.append(f"{rel}: listed in the manifest but missing from the bundle")
    for rel in sorted(by_path.keys() - wanted.keys()):
        report.problems.append(f"{rel}: in the bundle but not in the manifest (added after signing)")
    for rel in sorted(wanted.keys() & by_path.keys()):
        want, have = wanted[rel], by_path[rel]
        if want["size"] != have["size"]:
            report.problems.append(f"{rel}: size {have['size']} bytes, the manifest says {want['size']}")
        elif want["sha256"] != have["sha256"]:
            report.problems.append(f"{rel}: SHA-256 differs from the manifest (the file was changed)")


_PROOF_KEYS = frozenset({"format", "prev_hash", "record", "following", "seal"})
_SEAL_KEYS = frozenset({"up_to_seq", "chain_hash", "sealed_at", "key_label", "signature"})
_RECORD_KEYS = frozenset({*AUDIT_FIELDS, "chain_hash"})


def _load_proof(data: bytes) -> dict[str, Any]:
    """``audit-record.json`` parsed, with exactly the fields the chain and the seal cover and in the
    canonical form the signing wrote: nothing in it can change without the check noticing."""
    proof = json.loads(data.decode("utf-8"))
    if not isinstance(proof, dict) or proof.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a {RECORD_FORMAT} file")
    if manifest_bytes(proof) != data:
        raise ValueError("not in the canonical form the signing wrote (the file was changed)")
    if set(proof) != _PROOF_KEYS or set(proof["seal"]) != _SEAL_KEYS:
        raise ValueError("unexpected or missing fields")
    if any(set(r) != _RECORD_KEYS for r in [proof["record"], *proof["following"]]):
        raise ValueError("a record has unexpected or missing fields")
    return proof


def _check_audit_record(
    bundle: Path, report: BundleReport, key: ec.EllipticCurvePublicKey, key_label: str
) -> None:
    """The ``audit.report`` record holds this manifest's digest and lies in the sealed chain."""
    path = bundle / AUDIT_RECORD
    if not path.is_file():
        report.problems.append(f"{AUDIT_RECORD} is missing: no proof the signing is on the audit trail")
        return
    try:
        proof = _load_proof(path.read_bytes())
        record, chain, seal = proof["record"], list(proof["following"]), dict(proof["seal"])
        prev = str(proof["prev_hash"])
        detail = json.loads(record["detail"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        report.problems.append(f"{AUDIT_RECORD}: malformed ({exc})")
        return
    if seal["key_label"] != key_label:
        report.problems.append(f"{AUDIT_RECORD}: the seal names key {seal['key_label']!r}, not {key_label!r}")
    report.record_seq = record.get("seq")
    if record.get("action") != REPORT_ACTION:
        report.problems.append(f"{AUDIT_RECORD}: the record is {record.get('action')!r}, not {REPORT_ACTION}")
    if detail.get("manifest_sha256") != report.manifest_sha256:
        report.problems.append(
            f"{AUDIT_RECORD}: the audit record holds manifest digest {str(detail.get('manifest_sha256'))[:16]}…, "
            f"but {MANIFEST} hashes to {report.manifest_sha256[:16]}…"
        )
    expected = record.get("seq")
    for item in [record, *chain]:
        try:
            computed = audit_record_hash(prev, item)
        except (KeyError, TypeError, ValueError) as exc:
            report.problems.append(f"{AUDIT_RECORD}: record {item.get('seq')} is malformed ({exc})")
            return
        if item.get("seq") != expected or computed != item.get("chain_hash"):
            report.problems.append(
                f"{AUDIT_RECORD}: record {item.get('seq')} does not chain (edited, reordered or missing)"
            )
            return
        prev, expected = computed, int(expected) + 1
    try:
        up_to = int(seal["up_to_seq"])
        message = seal_message(up_to, str(seal["chain_hash"]), str(seal["sealed_at"]))
        signature = base64.b64decode(str(seal["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        report.problems.append(f"{AUDIT_RECORD}: the seal is malformed ({exc})")
        return
    report.sealed_up_to = up_to
    if up_to != int(expected) - 1 or seal["chain_hash"] != prev:
        report.problems.append(
            f"{AUDIT_RECORD}: the seal over records up to {up_to} does not cover the chain given "
            f"(ends at record {int(expected) - 1})"
        )
    try:
        key.verify(signature, message, ec.ECDSA(curve_of(key).hash_algorithm))
    except InvalidSignature:
        report.problems.append(
            f"{AUDIT_RECORD}: the seal over records up to {up_to} does not verify with the audit key"
        )
