"""EST (RFC 7030) over mutual TLS: ``cacerts``, ``csrattrs``, ``simpleenroll`` and ``simplereenroll``,
each at ``/.well-known/est`` and under a profile label ``/.well-known/est/{label}``; and people's
identity enrolment, ``/.well-known/est/identity/simpleenroll``, authenticated by a one-time code."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy.engine import Engine

from ckms_app.audit.record import named
from ckms_app.authority.enrolment import REFUSED
from ckms_app.daemon.http import authenticate, est_error, peer_der
from ckms_app.daemon.runtime import runtime_of
from ckms_app.errors import CkmsError, CsrRejected, EnrolmentRefused
from ckms_app.store import queries
from ckms_app.x509 import est_encoding

PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"


async def est_cacerts(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    return web.Response(
        body=rt.cacerts_body, headers={"Content-Type": PKCS7_CERTS, "Content-Transfer-Encoding": "base64"}
    )


async def est_csrattrs(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    profile = rt.config.profile(request.match_info.get("label"))
    body = base64.encodebytes(est_encoding.csr_attributes(rt.issuer.hash_name, profile.allowed_curves))
    return web.Response(
        body=body, headers={"Content-Type": "application/csrattrs", "Content-Transfer-Encoding": "base64"}
    )


async def est_enroll(request: web.Request) -> web.Response:
    """``simpleenroll`` and ``simplereenroll``: the issuer authorises the profile and signs."""
    return await _enroll(request, request.match_info.get("label"))


async def _enroll(request: web.Request, label: str | None) -> web.Response:
    rt = runtime_of(request)
    renew = request.path.endswith("/simplereenroll")
    try:
        principal = await authenticate(rt, request)
        try:
            csr_der = await read_est_body(request, rt.config.csr.max_bytes)
            renewing = renewed_certificate(rt.reader, csr_der) if renew else None
        except CkmsError as exc:
            action = "certificate.reissue" if renew else "certificate.issue"
            await rt.issuer.record_refusal(principal, action, label or "default", exc)
            raise
        issued = await rt.issuer.enroll(csr_der, principal, profile_name=label, renewing=renewing)
    except CkmsError as exc:
        return est_error(exc)
    body = base64.encodebytes(pkcs7.serialize_certificates([issued.certificate], serialization.Encoding.DER))
    return web.Response(
        body=body, headers={"Content-Type": PKCS7_CERTS, "Content-Transfer-Encoding": "base64"}
    )


async def est_identity_enroll(request: web.Request) -> web.Response:
    """A person's identity certificate from their own CSR, with HTTP Basic ``ID:CODE`` (their one-time
    enrolment code) instead of a client certificate: the first credential cannot be asked for one."""
    if "Authorization" not in request.headers and peer_der(request) is not None:
        # A client certificate and no code: ordinary EST for the "identity" profile label, which
        # the ACL decides like any other profile.
        return await _enroll(request, "identity")
    rt = runtime_of(request)
    try:
        try:
            entity_id, code = _basic_credentials(request)
        except EnrolmentRefused as exc:
            who = named("unauthenticated", "none")
            peer = str(request.remote)
            await rt.enrolment.record_refusal(who, "-", exc, via="est", peer=peer, missing="ID:CODE")
            raise
        try:
            csr_der = await read_est_body(request, rt.config.csr.max_bytes)
        except CkmsError as exc:
            await rt.enrolment.record_refusal(named(entity_id, "none"), entity_id, exc, via="est")
            raise
        done = await rt.enrolment.enrol(entity_id, code, csr_der, password_hash=None, via="est")
    except EnrolmentRefused as exc:
        response = est_error(exc)
        response.headers["WWW-Authenticate"] = 'Basic realm="ckms-enrolment"'
        return response
    except CkmsError as exc:
        return est_error(exc)
    body = base64.encodebytes(pkcs7.serialize_certificates([done.certificate], serialization.Encoding.DER))
    return web.Response(
        body=body, headers={"Content-Type": PKCS7_CERTS, "Content-Transfer-Encoding": "base64"}
    )


def _basic_credentials(request: web.Request) -> tuple[str, str]:
    """``ID:CODE`` from the Authorization header; nothing else is accepted (a missing one is audited)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    try:
        entity_id, sep, code = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        sep = ""
    if scheme.lower() != "basic" or not sep or not entity_id or not code:
        raise EnrolmentRefused(REFUSED)
    return entity_id, code


async def read_est_body(request: web.Request, max_bytes: int) -> bytes:
    """The DER PKCS#10 request from a base64 body of at most about ``max_bytes`` decoded."""
    # base64 grows the DER by 4/3 plus line breaks; allow for that before decoding.
    limit = max_bytes * 4 // 3 + max_bytes // 32 + 64
    if request.content_length is not None and request.content_length > limit:
        raise CsrRejected(
            f"request is {request.content_length} bytes; the limit is {limit} (base64)", code="csr_too_large"
        )
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise CsrRejected(f"request exceeds {limit} bytes (base64)", code="csr_too_large")
    ctype = request.headers.get("Content-Type", "")
    if ctype and not ctype.startswith("application/pkcs10"):
        raise CsrRejected(f"Content-Type must be application/pkcs10, not {ctype}", code="csr_content_type")
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CsrRejected(
            "body is not base64: EST expects a base64-encoded DER PKCS#10 request", code="csr_malformed"
        ) from None


def renewed_certificate(reader: Engine, csr_der: bytes) -> x509.Certificate:
    """The newest valid end-entity certificate with the request's subject: what is being renewed."""
    try:
        subject = x509.load_der_x509_csr(csr_der).subject.rfc4514_string()
    except ValueError as exc:
        raise CsrRejected(f"not a DER PKCS#10 request: {exc}", code="csr_malformed") from None
    with reader.connect() as conn:
        der = queries.current_certificate_der(conn, subject)
    if der is None:
        raise CsrRejected(
            f"no valid certificate with subject {subject} to renew", code="csr_reenroll_unknown"
        )
    return x509.load_der_x509_certificate(der)


def add_routes(app: web.Application) -> None:
    # Before the labelled routes, which would otherwise take "identity" for a profile label.
    app.router.add_post("/.well-known/est/identity/simpleenroll", est_identity_enroll)
    for prefix in ("/.well-known/est", "/.well-known/est/{label}"):
        app.router.add_get(f"{prefix}/cacerts", est_cacerts)
        app.router.add_get(f"{prefix}/csrattrs", est_csrattrs)
        app.router.add_post(f"{prefix}/simpleenroll", est_enroll)
        app.router.add_post(f"{prefix}/simplereenroll", est_enroll)
