"""EST (RFC 7030) over mutual TLS: ``cacerts``, ``csrattrs``, ``simpleenroll`` and ``simplereenroll``,
each at ``/.well-known/est`` and under a profile label ``/.well-known/est/{label}``; and people's
identity enrolment, ``/.well-known/est/identity/simpleenroll``, authenticated by a one-time code.

Every enrolment handler authenticates and authorises the caller before it reads the body, parses the
request or looks anything up; an unknown label is 404. Every refusal is an EST error (``code: sentence``)
with its audit record. ``simplereenroll`` by a device holding its own valid certificate (RFC 7030
§4.2.2) is answered only when ``[issuance] device_reenrolment`` is on, and is audited as the device.
"""

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
from ckms_app.authority.issuance import DeviceHolder, Issued
from ckms_app.daemon.bodies import read_est_body
from ckms_app.daemon.http import authenticate, est_error, peer_der
from ckms_app.daemon.runtime import Runtime, runtime_of
from ckms_app.errors import CkmsError, CsrRejected, EnrolmentRefused
from ckms_app.store import queries
from ckms_app.x509 import est_encoding
from ckms_app.x509.csr_policy import request_subject

PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"


async def est_cacerts(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    label = request.match_info.get("label")
    try:
        rt.issuer.profile_for(label)  # the same certificates under every label, but only real labels
    except CkmsError as exc:
        return est_error(exc)
    return web.Response(
        body=rt.cacerts_body, headers={"Content-Type": PKCS7_CERTS, "Content-Transfer-Encoding": "base64"}
    )


async def est_csrattrs(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    try:
        profile = rt.issuer.profile_for(request.match_info.get("label"))
    except CkmsError as exc:
        return est_error(exc)
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
    action = "certificate.reissue" if renew else "certificate.issue"
    try:
        holder = rt.issuer.device_holder(peer_der(request)) if renew else None
        if holder is not None:
            issued = await _reenrol_device(rt, request, holder, label)
        else:
            principal = await authenticate(rt, request)
            try:
                rt.issuer.authorise(principal, label)  # before the body is read, parsed or looked up
                csr_der = await read_est_body(request, rt.config.csr.max_bytes)
                renewing = renewed_certificate(rt.reader, csr_der) if renew else None
            except CkmsError as exc:
                await rt.issuer.record_refusal(principal, action, label or rt.config.default_profile, exc)
                raise
            issued = await rt.issuer.enroll(csr_der, principal, profile_name=label, renewing=renewing)
    except CkmsError as exc:
        return est_error(exc)
    mark = rt.stages.mark()
    response = _certs_only(issued)
    rt.stages.charge("response", mark)
    return response


async def _reenrol_device(
    rt: Runtime, request: web.Request, holder: DeviceHolder, label: str | None
) -> Issued:
    """RFC 7030 §4.2.2 by the certificate's holder; refused (and audited) unless the CA allows it."""
    try:
        rt.issuer.authorise_device(holder, label)  # before the body is read
        csr_der = await read_est_body(request, rt.config.csr.max_bytes)
    except CkmsError as exc:
        await rt.issuer.record_refusal(holder.actor, "certificate.reissue", holder.serial, exc)
        raise
    return await rt.issuer.reenrol_device(csr_der, holder, label)


def _certs_only(issued: Issued) -> web.Response:
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
        who = await rt.enrolment.claim(entity_id, code, via="est")  # the code first, then the body
        try:
            csr_der = await read_est_body(request, rt.config.csr.max_bytes)
        except CkmsError as exc:
            await rt.enrolment.release(who, exc, via="est")
            raise
        done = await rt.enrolment.complete(who, csr_der, password_hash=None, via="est")
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


def renewed_certificate(reader: Engine, csr_der: bytes) -> x509.Certificate:
    """The newest valid end-entity certificate with the request's subject: what is being renewed."""
    subject = request_subject(csr_der)
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
