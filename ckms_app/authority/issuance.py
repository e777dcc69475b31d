"""The issuance hot path, top to bottom (A.37, A.38, A.40, A.61, A.62).

authorise → check the CSR → duplicate handling → build the TBSCertificate → the signer (guard, lint a
throwaway-signed copy, the HSM signs those very TBS bytes) → certificate row + audit record in one
durable commit → return.
Nothing is signed by the HSM unless every check and the linter passed, and nothing is returned
to the client before it is committed.

Authorisation comes first twice: the EST route asks :meth:`Issuer.authorise` (or, for a device renewing
itself, :meth:`Issuer.authorise_device`) before it reads a byte of the body, so a caller without the
right learns nothing from the parsers or the store; :meth:`Issuer.enroll` asks again, because it is
also the entry point of callers without a route.

Two requesters: an individual acting in a role (the terminal's operator, :meth:`Issuer.enroll`), and,
when ``[issuance] device_reenrolment`` is on, a device holding a still-valid certificate of this CA that
renews itself (RFC 7030 §4.2.2, :meth:`Issuer.reenrol_device`), audited as the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ckms_app.audit.record import Actor, event, named, outcome_of, record, refusal
from ckms_app.authority.rbac import Principal
from ckms_app.authority.signer import Signer
from ckms_app.config import Config, Profile
from ckms_app.cpu_stages import StageClock
from ckms_app.errors import CkmsError, Conflict, CsrRejected, NotAuthorized, UnknownLabel
from ckms_app.store.point_reads import PointReader
from ckms_app.store.schema import audit_events, certificates, utcnow
from ckms_app.store.writer import GroupCommitWriter, Inserts
from ckms_app.x509.csr_policy import CheckedCsr, check_csr, public_key_sha256
from ckms_app.x509.key_ids import issuer_key_id, subject_key_id
from ckms_app.x509.profiles import EndEntityTemplate, new_serial


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    der: bytes
    serial_hex: str
    reused: bool  # the same request was already answered; this is that certificate


@dataclass(frozen=True)
class DeviceHolder:
    """A TLS client whose verified certificate is an end-entity certificate this CA issued and stored."""

    certificate: x509.Certificate
    serial: str
    profile: str
    status: str  # valid | revoked

    @property
    def actor(self) -> Actor:
        """Who the audit trail names: the device, by the serial of the certificate it holds."""
        return named(f"device:{self.serial}", "device")


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def certificate_row(
    cert: x509.Certificate,
    der: bytes,
    *,
    kind: str,
    profile: str,
    requested_by: str,
    csr_sha256: str | None,
    pubkey_sha256: str,
    sans: tuple[x509.GeneralName, ...] | None = None,
    issuer: str | None = None,
) -> dict[str, object]:
    """The ``certificates`` row. ``sans`` and ``issuer`` (the issuing key's identifier), when the caller
    already has them, save re-parsing the extensions."""
    if sans is None:
        try:
            sans = tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = ()
    return {
        "serial": serial_hex(cert.serial_number),
        "kind": kind,
        "profile": profile,
        "subject": cert.subject.rfc4514_string(),
        "sans": ",".join(f"{type(n).__name__}:{n.value}" for n in sans),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "issued_at": utcnow(),
        "requested_by": requested_by,
        "csr_sha256": csr_sha256,
        "pubkey_sha256": pubkey_sha256,
        "status": "valid",
        "der": der,
        "issuer_key_id": issuer if issuer is not None else issuer_key_id(cert),
    }


class Issuer:
    """Issues end-entity certificates for EST and the CLI. One per daemon process."""

    def __init__(
        self,
        config: Config,
        signer: Signer,
        ca_cert: x509.Certificate,
        writer: GroupCommitWriter,
        reader: Engine,
        stages: StageClock | None = None,
    ) -> None:
        self._config = config
        # CPU per stage for the benchmark (off unless asked for); charged between awaits only
        self._stages = stages or StageClock()
        self._signer = signer  # guard (error state, clock gate) → lint → the HSM signs the linted TBS
        self._ca_cert = ca_cert
        self._writer = writer
        # Duplicate-request lookup on every enrolment: a driver-level point read (see point_reads).
        self._point_reader = PointReader(reader)
        self._der_for_csr = self._point_reader.prepare(
            select(certificates.c.der, certificates.c.status).where(
                certificates.c.csr_sha256 == bindparam("csr_sha256")
            )
        )
        self._device_by_serial = self._point_reader.prepare(
            select(certificates.c.der, certificates.c.profile, certificates.c.status).where(
                certificates.c.serial == bindparam("serial"), certificates.c.kind == "end-entity"
            )
        )
        self._ca_pubkey_sha256 = public_key_sha256(ca_cert.public_key())
        self._ca_key_id = subject_key_id(ca_cert)  # every certificate's issuer_key_id
        # e.g. "sha256": the CA's signature algorithm, for csrattrs
        self.hash_name = signer.hash_algorithm.name
        self._crl_url, self._delta_url = (
            config.server.crl_url("full", config.ca_generation),
            config.server.crl_url("delta", config.ca_generation),
        )
        self._templates: dict[str, EndEntityTemplate] = {}

    def profile_for(self, label: str | None) -> Profile:
        """The profile an EST label names (none: the default), or 404: labels are this CA's to define."""
        try:
            return self._config.profile(label)
        except CkmsError:
            raise UnknownLabel(f"no EST label {label!r} on this CA") from None

    def authorise(self, principal: Principal, label: str | None) -> Profile:
        """Step 1, asked by the route before the body is read: the label exists and the role may use it."""
        profile = self.profile_for(label)
        principal.require("certificate.issue", f"profile:{profile.name}")
        return profile

    def device_holder(self, peer_der: bytes | None) -> DeviceHolder | None:
        """The stored device certificate the TLS client presented, or None (no certificate, a person's).

        The handshake already verified the certificate against this CA, so its serial names the row; the
        row's DER must still be the very certificate presented.
        """
        if not peer_der:
            return None
        try:
            serial = serial_hex(x509.load_der_x509_certificate(peer_der).serial_number)
        except ValueError:
            return None  # not one this CA would have issued; authentication refuses it as usual
        row = self._point_reader.first(self._device_by_serial, serial=serial)
        if row is None or bytes(row[0]) != peer_der:
            return None
        return DeviceHolder(x509.load_der_x509_certificate(peer_der), serial, str(row[1]), str(row[2]))

    def authorise_device(self, holder: DeviceHolder, label: str | None) -> Profile:
        """Step 1 for a device renewing itself (RFC 7030 §4.2.2): allowed by the CA, certificate still
        valid and unrevoked, and the label (if any) is the profile it was issued under."""
        if not self._config.device_reenrolment:
            raise NotAuthorized(
                "re-enrolment with the device's own certificate is disabled on this CA "
                "([issuance] device_reenrolment = false): renew the device through the terminal",
                code="device_reenrolment_disabled",
            )
        if holder.status != "valid":
            raise NotAuthorized(
                f"certificate {holder.serial} is revoked and cannot renew itself", code="device_revoked"
            )
        if holder.certificate.not_valid_after_utc <= utcnow():
            raise NotAuthorized(
                f"certificate {holder.serial} has expired and cannot renew itself", code="device_expired"
            )
        profile = self.profile_for(label if label is not None else holder.profile)
        if profile.name != holder.profile:
            raise NotAuthorized(
                f"certificate {holder.serial} was issued under profile {holder.profile!r} and renews under "
                f"it only, not {profile.name!r}",
                code="device_reenrolment_profile",
            )
        return profile

    async def enroll(
        self,
        csr_der: bytes,
        principal: Principal,
        *,
        profile_name: str | None = None,
        renewing: x509.Certificate | None = None,
    ) -> Issued:
        action = "certificate.reissue" if renewing is not None else "certificate.issue"
        stages = self._stages
        try:
            # 1. authorise: label → profile, role → operation → profile (the route asked already, before
            #    reading the body); the signer asks the guard again before it signs
            mark = stages.mark()
            profile = self.authorise(principal, profile_name)
            stages.charge("authorise", mark)
            await self._signer.guard.check()
            # 2. the request itself
            mark = stages.mark()
            checked = check_csr(csr_der, profile, self._config.csr.max_bytes)
            if renewing is not None:
                _check_renewal(checked, renewing)
            stages.charge("csr", mark)
        except CkmsError as exc:
            await self.record_refusal(principal, action, profile_name or self._config.default_profile, exc)
            raise
        return await self._issue(checked, profile, principal, action, renewing)

    async def reenrol_device(self, csr_der: bytes, holder: DeviceHolder, label: str | None = None) -> Issued:
        """RFC 7030 §4.2.2 by the holder itself: same subject and subjectAltName, a new key allowed."""
        action = "certificate.reissue"
        try:
            # 1. authorise: the CA allows it, the holder's certificate is valid, the label is its profile
            profile = self.authorise_device(holder, label)
            await self._signer.guard.check()
            # 2. the request itself, renewing exactly the certificate presented
            checked = check_csr(csr_der, profile, self._config.csr.max_bytes)
            _check_renewal(checked, holder.certificate)
        except CkmsError as exc:
            await self.record_refusal(holder.actor, action, holder.serial, exc)
            raise
        return await self._issue(checked, profile, holder.actor, action, holder.certificate)

    async def _issue(
        self,
        checked: CheckedCsr,
        profile: Profile,
        actor: Actor,
        action: str,
        renewing: x509.Certificate | None,
    ) -> Issued:
        """Steps 3–6 for an authorised requester and a checked request."""
        stages = self._stages
        try:
            mark = stages.mark()
            if checked.pubkey_sha256 == self._ca_pubkey_sha256:
                raise CsrRejected("the request carries the CA's own public key", code="csr_bad_key")
            # 3. the same request again: the certificate already issued for it, on the record
            existing = self._existing_for(checked)
            mark = stages.charge("csr", mark)
            if existing is not None:
                await self._record_reuse(actor, action, profile, existing)
                return existing
            # 4. build the TBSCertificate: the profile's full validity, or refused when it would pass the
            #    CA's expiry or an algorithm's end of life (A.62; a date compare, never a silent cut)
            tbs = self._template(profile).tbs(
                subject=checked.subject,
                sans=checked.sans,
                public_key=checked.public_key,
                serial=new_serial(),
                now=utcnow(),
                signature_hash=self._signer.hash_algorithm,
                spki=checked.spki,
            )
            stages.charge("build", mark)
            # 5. lint, then the HSM signs exactly the linted TBSCertificate (the signer)
            cert, der = await self._signer.certificate_tbs(tbs)
        except CkmsError as exc:
            await self.record_refusal(actor, action, profile.name, exc)
            raise
        # 6. store + audit, one durable commit
        mark = stages.mark()
        row = certificate_row(
            cert,
            der,
            kind="end-entity",
            profile=profile.name,
            requested_by=actor.entity_id,
            csr_sha256=checked.csr_sha256,
            pubkey_sha256=checked.pubkey_sha256,
            sans=checked.sans,
            issuer=self._ca_key_id,
        )
        serial = serial_hex(cert.serial_number)  # the row's "serial"
        audit = event(
            actor,
            action,
            serial,
            "success",
            {
                "subject": row["subject"],
                "profile": profile.name,
                "renews": serial_hex(renewing.serial_number) if renewing else None,
            },
        )

        stages.charge("commit_audit", mark)
        try:
            await self._writer.submit(Inserts(((certificates, row), (audit_events, audit))))
        except IntegrityError:
            # A concurrent identical request won the race: return its certificate instead.
            try:
                existing = self._existing_for(checked)
            except CkmsError as exc:
                await self.record_refusal(actor, action, profile.name, exc)
                raise
            if existing is None:
                raise Conflict("the certificate could not be stored (serial collision); retry") from None
            await self._record_reuse(actor, action, profile, existing)
            return existing
        stages.count_issued()
        return Issued(cert, der, serial, reused=False)

    def _template(self, profile: Profile) -> EndEntityTemplate:
        template = self._templates.get(profile.name)
        if template is None:
            template = self._templates[profile.name] = EndEntityTemplate(
                profile=profile, issuer=self._ca_cert, crl_url=self._crl_url, delta_crl_url=self._delta_url
            )
        return template

    def _existing_for(self, checked: CheckedCsr) -> Issued | None:
        """The certificate already issued for this exact request; a revoked one is never handed out again
        (its key may be the compromised one): 409, and the requester must make a new request."""
        found = self._point_reader.first(self._der_for_csr, csr_sha256=checked.csr_sha256)
        if found is None:
            return None
        if self._config.csr.duplicate_csr == "reject":
            raise CsrRejected("this exact request was already answered", code="csr_duplicate")
        der = bytes(found[0])
        cert = x509.load_der_x509_certificate(der)
        serial = serial_hex(cert.serial_number)
        if found[1] != "valid":
            raise Conflict(
                f"this exact request was answered with certificate {serial}, which is {found[1]}: "
                "make a new key and a new request",
                code="csr_duplicate_revoked",
            )
        return Issued(cert, der, serial, reused=True)

    async def _record_reuse(self, actor: Actor, action: str, profile: Profile, existing: Issued) -> None:
        """Handing out a stored certificate again is an issuance event of its own on the trail."""
        detail = {
            "profile": profile.name,
            "reused": True,
            "subject": existing.certificate.subject.rfc4514_string(),
        }
        await record(self._writer, actor, action, existing.serial_hex, "success", detail)

    def close(self) -> None:
        self._point_reader.close()

    async def record_refusal(self, actor: Actor, action: str, target: str, exc: CkmsError) -> None:
        await record(self._writer, actor, action, target, outcome_of(exc), refusal(exc))


def _check_renewal(checked: CheckedCsr, current: x509.Certificate) -> None:
    """RFC 7030 §4.2.2: a re-enrolment keeps the subject (and SAN) of the certificate it renews."""
    if checked.subject != current.subject:
        raise CsrRejected(
            "re-enrolment must keep the subject of the certificate being renewed", code="csr_reenroll_subject"
        )
    try:
        current_sans = tuple(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        current_sans = ()
    if set(checked.sans) != set(current_sans):
        raise CsrRejected(
            "re-enrolment must keep the subjectAltName of the certificate being renewed",
            code="csr_reenroll_subject",
        )
