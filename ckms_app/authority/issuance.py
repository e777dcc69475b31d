"""The issuance hot path, top to bottom (A.37, A.38, A.40, A.61, A.62).

authorise → check the CSR → duplicate handling → build the TBSCertificate → the signer (guard, lint a
throwaway-signed copy, the HSM signs those very TBS bytes) → certificate row + audit record in one
durable commit → return.
Nothing is signed by the HSM unless every check and the linter passed, and nothing is returned
to the client before it is committed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ckms_app.audit.record import event, outcome_of, record, refusal
from ckms_app.authority.rbac import Principal
from ckms_app.authority.signer import Signer
from ckms_app.config import Config, Profile
from ckms_app.errors import CkmsError, Conflict, CsrRejected
from ckms_app.store.point_reads import PointReader
from ckms_app.store.schema import audit_events, certificates, utcnow
from ckms_app.store.writer import GroupCommitWriter, Inserts
from ckms_app.x509.csr_policy import CheckedCsr, check_csr, public_key_sha256
from ckms_app.x509.profiles import EndEntityTemplate, new_serial


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    der: bytes
    serial_hex: str
    reused: bool  # the same request was already answered; this is that certificate


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
) -> dict[str, object]:
    """The ``certificates`` row. ``sans``, when the caller already has them, saves re-parsing the extensions."""
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
    ) -> None:
        self._config = config
        self._signer = signer  # guard (error state, clock gate) → lint → the HSM signs the linted TBS
        self._ca_cert = ca_cert
        self._writer = writer
        # Duplicate-request lookup on every enrolment: a driver-level point read (see point_reads).
        self._point_reader = PointReader(reader)
        self._der_for_csr = self._point_reader.prepare(
            select(certificates.c.der).where(certificates.c.csr_sha256 == bindparam("csr_sha256"))
        )
        self._ca_pubkey_sha256 = public_key_sha256(ca_cert.public_key())
        # e.g. "sha256": the CA's signature algorithm, for csrattrs
        self.hash_name = signer.hash_algorithm.name
        base = config.server.crl_base_url
        self._crl_url, self._delta_url = f"{base}/full.crl", f"{base}/delta.crl"
        self._templates: dict[str, EndEntityTemplate] = {}

    async def enroll(
        self,
        csr_der: bytes,
        principal: Principal,
        *,
        profile_name: str | None = None,
        renewing: x509.Certificate | None = None,
    ) -> Issued:
        profile = self._config.profile(profile_name)
        action = "certificate.reissue" if renewing is not None else "certificate.issue"
        try:
            # 1. authorise: role → operation → profile; the signer asks the guard again before it signs
            principal.require("certificate.issue", f"profile:{profile.name}")
            await self._signer.guard.check()
            # 2. the request itself
            checked = check_csr(csr_der, profile, self._config.csr.max_bytes)
            if renewing is not None:
                _check_renewal(checked, renewing)
            if checked.pubkey_sha256 == self._ca_pubkey_sha256:
                raise CsrRejected("the request carries the CA's own public key", code="csr_bad_key")
            # 3. the same request again: answer with the certificate already issued for it
            existing = self._existing_for(checked)
            if existing is not None:
                return existing
            # 4. build the TBSCertificate
            builder = self._template(profile).builder(
                subject=checked.subject,
                sans=checked.sans,
                public_key=checked.public_key,
                serial=new_serial(),
                now=utcnow(),
            )
            # 5. lint, then the HSM signs exactly the linted TBSCertificate (the signer)
            cert, der = await self._signer.certificate(builder)
        except CkmsError as exc:
            await self.record_refusal(principal, action, profile.name, exc)
            raise
        # 6. store + audit, one durable commit
        row = certificate_row(
            cert,
            der,
            kind="end-entity",
            profile=profile.name,
            requested_by=principal.entity_id,
            csr_sha256=checked.csr_sha256,
            pubkey_sha256=checked.pubkey_sha256,
            sans=checked.sans,
        )
        serial = serial_hex(cert.serial_number)  # the row's "serial"
        audit = event(
            principal,
            action,
            serial,
            "success",
            {
                "subject": row["subject"],
                "profile": profile.name,
                "renews": serial_hex(renewing.serial_number) if renewing else None,
            },
        )

        try:
            await self._writer.submit(Inserts(((certificates, row), (audit_events, audit))))
        except IntegrityError:
            # A concurrent identical request won the race: return its certificate instead.
            existing = self._existing_for(checked)
            if existing is None:
                raise Conflict("the certificate could not be stored (serial collision); retry") from None
            return existing
        return Issued(cert, der, serial, reused=False)

    def _template(self, profile: Profile) -> EndEntityTemplate:
        template = self._templates.get(profile.name)
        if template is None:
            template = self._templates[profile.name] = EndEntityTemplate(
                profile=profile, issuer=self._ca_cert, crl_url=self._crl_url, delta_crl_url=self._delta_url
            )
        return template

    def _existing_for(self, checked: CheckedCsr) -> Issued | None:
        found = self._point_reader.first(self._der_for_csr, csr_sha256=checked.csr_sha256)
        if found is None:
            return None
        if self._config.csr.duplicate_csr == "reject":
            raise CsrRejected("this exact request was already answered", code="csr_duplicate")
        der = bytes(found[0])
        cert = x509.load_der_x509_certificate(der)
        return Issued(cert, der, serial_hex(cert.serial_number), reused=True)

    def close(self) -> None:
        self._point_reader.close()

    async def record_refusal(self, principal: Principal, action: str, profile: str, exc: CkmsError) -> None:
        await record(self._writer, principal, action, profile, outcome_of(exc), refusal(exc))


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
