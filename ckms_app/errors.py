"""Errors with a stable code, an HTTP status and a message a person can act on.

Every error class ckms raises is defined here, so the EST/JSON layers, the CLI and the audit trail
report the same code and wording, and no layer has to import another to catch its errors.
"""

from __future__ import annotations


class CkmsError(Exception):
    """Base class: ``code`` is machine-readable, ``str(self)`` is for people."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(CkmsError):
    code = "config"


class HsmError(CkmsError):
    """The token is missing, locked or refused an operation."""

    code = "hsm_unavailable"
    http_status = 503


class CsrRejected(CkmsError):
    """The PKCS#10 request failed a check; nothing was signed."""

    code = "csr_rejected"
    http_status = 400


class NotAuthenticated(CkmsError):
    code = "not_authenticated"
    http_status = 401


class NotAuthorized(CkmsError):
    code = "forbidden"
    http_status = 403


class NotFound(CkmsError):
    code = "not_found"
    http_status = 404


class Conflict(CkmsError):
    code = "conflict"
    http_status = 409


class LintFailed(CkmsError):
    """The pre-issuance linter found an error: the HSM was not asked to sign."""

    code = "lint_failed"
    http_status = 500


class ServiceUnavailable(CkmsError):
    code = "unavailable"
    http_status = 503


class ClockUnsynchronised(CkmsError):
    """The system clock is not known to be within the configured bound of true time (A.33–A.35):
    nothing is signed until it is. Retryable."""

    code = "clock_unsynchronised"
    http_status = 503


class ErrorStateActive(CkmsError):
    """A self-test failed or the HSM became unavailable (E.32, E.35–E.37): the CA does no
    cryptographic work until an administrator recovers it."""

    code = "error_state"
    http_status = 503


class CustodyError(CkmsError):
    """HSM administration without two valid custodian credentials, or a bad share (E.22, E.23)."""

    code = "custody"
    http_status = 403


class SelfTestFailed(CkmsError):
    code = "selftest_failed"
    http_status = 503


class PasswordError(CkmsError):
    code = "password"
    http_status = 400


class BadRequest(CkmsError):
    code = "bad_request"
    http_status = 400


class BodyTooLarge(BadRequest):
    """The request body is longer than the route accepts: refused before any of it is parsed."""

    code = "body_too_large"
    http_status = 413


class UnknownLabel(NotFound):
    """An EST path segment that names no certificate profile (RFC 7030 §3.2.2 labels are the CA's to define)."""

    code = "est_unknown_label"


class InternalFault(CkmsError):
    """A fault inside ckms (a bug, not the client's input): the client gets this, the trail the detail."""

    code = "internal_error"
    http_status = 500


class SeparationOfDuties(NotAuthorized):
    code = "separation_of_duties"


class LintUnavailable(ServiceUnavailable):
    """The linter cannot answer (binary missing, helper died or hung): nothing may be signed."""

    code = "lint_unavailable"


class ExportError(CkmsError):
    code = "audit_export"


class AuditBypass(RuntimeError):
    """Something tried to insert into audit_events without going through :func:`append_audit`."""


class ShamirError(ValueError):
    """Shares that cannot be combined: too few, inconsistent, or failing the integrity tag."""


class ClientError(Exception):
    """A request failed; the message says why (server's words when it answered)."""


class CredentialRefused(NotAuthorized):
    """A known entity's credential was refused (disabled, revoked, expired): the audit names it."""

    def __init__(self, message: str, entity_id: str, role: str) -> None:
        super().__init__(message)
        self.entity_id = entity_id
        self.role = role


class SelfGrant(SeparationOfDuties):
    """A proposal or approval that would grant a role, or an ACL permission, to a role its proposer or
    approver holds: nobody widens their own rights, with or without a second person."""

    code = "self_grant"


class SelfApproval(SeparationOfDuties):
    """The second person of a two-person change must be a different person from the proposer."""

    code = "self_approval"


class EnrolmentRefused(NotAuthenticated):
    """A one-time enrolment code that is unknown, wrong, used, expired or locked. The message the client
    gets never says which."""

    code = "enrolment_refused"


class CrlRejected(CkmsError):
    """A CRL the IoT hub or the terminal's relay must not use (forged, replayed, expired, a delta...)."""

    code = "crl_rejected"
    http_status = 422


class BundleError(CkmsError):
    """The report bundle or manifest cannot be used at all (not a directory, unreadable, not a manifest)."""

    code = "report_bundle"
    http_status = 400


class EvidenceError(CkmsError):
    """The evidence file of an attestation cannot be stored (missing, empty, too large, not a regular file)."""

    code = "evidence"
    http_status = 400


class UnknownItem(CkmsError):
    """The item is not in the catalog, or it is not a procedural one (nothing to attest)."""

    code = "unknown_item"
    http_status = 400
