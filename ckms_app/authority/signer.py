"""The signer: the only component that uses the CA key (A.38, A.43, E.36, A.33).

Every certificate, CRL (full and delta) and CA request ckms signs goes through :class:`Signer`:
EST issuance and re-issuance, the ceremony's CA, TLS and identity certificates, identity enrolment,
``ckms ca renew-tls`` and the CRL publisher. For each signature, in this order:

1. the guard is asked: no signature in the error state (E.36) or while the clock is not
   synchronised (A.33);
2. the to-be-signed structure is signed with a throwaway key on the CA's curve and the copy is
   linted (zlint: RFC 5280, CA/B baseline); a blocking finding refuses the signature;
3. the HSM signs exactly the TBS bytes the linter saw, and the structure is assembled around them
   (:mod:`ckms_app.x509.assembly`): nothing is encoded twice, so what is issued is what was linted.

An HSM failure at step 3 puts the daemon in its error state. Because the guard and the linter live
here and not in the callers, no path can sign around them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.authority.guard import SigningGuard, make_guard
from ckms_app.authority.linter import AsyncLinter, Linter, LintReport, find_linter_binary
from ckms_app.config import Config
from ckms_app.cpu_stages import StageClock
from ckms_app.errors import HsmError, LintFailed
from ckms_app.hsm.token import HsmEcPrivateKey
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509 import crl_der, der
from ckms_app.x509.assembly import (
    assemble,
    certificate_tbs_signature_algorithm,
    signature_algorithm_der,
    tbs_der,
)

_DER = serialization.Encoding.DER
# RFC 5758 §3.2: ecdsa-with-SHA256/384, whose AlgorithmIdentifier has no parameters
_ECDSA_WITH = {"sha256": "1.2.840.10045.4.3.2", "sha384": "1.2.840.10045.4.3.3"}


class Signer:
    """Guard → lint → HSM signs the linted bytes. One per process that signs."""

    def __init__(
        self,
        ca_key: HsmEcPrivateKey,
        linter: Linter | None,
        guard: SigningGuard,
        stages: StageClock | None = None,
    ) -> None:
        self._ca_key = ca_key
        self._stages = stages or StageClock()  # the benchmark's CPU per stage; off unless asked for
        # None only where the CA's configuration disables linting ([lint] enabled = false)
        self._linter = linter
        self.guard = guard
        self.hash_algorithm = ca_key.curve_info.hash_algorithm
        self._signature_algorithm = ec.ECDSA(self.hash_algorithm)
        # Signs the copies the linter sees; never anything that leaves the signer.
        self._throwaway = ec.generate_private_key(ca_key.curve_info.crypto_curve)
        # the DER AlgorithmIdentifier of the CA key's signatures (ecdsa-with-SHA256/384, no parameters)
        self._algorithm_der = der.tlv(0x30, der.oid(_ECDSA_WITH[self.hash_algorithm.name]))

    async def certificate(
        self, builder: x509.CertificateBuilder, what: str = "certificate"
    ) -> tuple[x509.Certificate, bytes]:
        """Sign a certificate: the parsed certificate and its DER."""
        await self.guard.check()
        mark = self._stages.mark()  # CPU is charged between awaits only: other requests run during them
        linted_der = builder.sign(self._throwaway, self.hash_algorithm).public_bytes(_DER)
        self._stages.charge("lint", mark)
        return await self._lint_and_sign(
            tbs_der(linted_der), signature_algorithm_der(linted_der), linted_der, what
        )

    async def certificate_tbs(self, tbs: bytes, what: str = "certificate") -> tuple[x509.Certificate, bytes]:
        """Sign a TBSCertificate given as DER (the issuance hot path builds it from a template,
        :meth:`~ckms_app.x509.profiles.EndEntityTemplate.tbs`): the same guard, throwaway copy, lint and
        HSM signature of those very bytes as :meth:`certificate`, without cryptography's builder."""
        await self.guard.check()
        mark = self._stages.mark()
        algorithm = certificate_tbs_signature_algorithm(tbs)
        if algorithm != self._algorithm_der:
            raise LintFailed(f"the {what} names a signature algorithm other than the CA key's")
        linted_der = assemble(tbs, algorithm, self._throwaway.sign(tbs, self._signature_algorithm))
        self._stages.charge("lint", mark)
        return await self._lint_and_sign(tbs, algorithm, linted_der, what)

    async def _lint_and_sign(
        self, tbs: bytes, algorithm: bytes, linted_der: bytes, what: str
    ) -> tuple[x509.Certificate, bytes]:
        """Steps 2 and 3 for a certificate whose throwaway-signed copy is ``linted_der``."""
        stages = self._stages
        if self._linter is not None:
            report = await self._linter.lint_certificate(linted_der)
            mark = stages.mark()
            _refuse_if_blocking(report, what)
            stages.charge("lint", mark)
        mark = stages.mark()
        der = await self._sign_tbs(tbs, algorithm)  # no suspension unless the HSM fails
        certificate = x509.load_der_x509_certificate(der)
        stages.charge("hsm", mark)
        return certificate, der

    async def crl(
        self, builder: x509.CertificateRevocationListBuilder, what: str = "CRL", entries: Sequence[bytes] = ()
    ) -> bytes:
        """Sign a full or delta CRL: its DER. ``entries`` (DER revokedCertificates elements from
        :mod:`ckms_app.x509.crl_der`) are put into the builder's TBSCertList: for 100,000 entries this
        saves cryptography's three encodings of the list; the linter and the HSM still see one TBS."""
        await self.guard.check()
        head = builder.sign(self._throwaway, self.hash_algorithm)
        tbs = crl_der.with_entries(head.tbs_certlist_bytes, entries)
        throwaway_signature = self._throwaway.sign(tbs, self._signature_algorithm)
        linted_der = assemble(tbs, crl_der.signature_algorithm(tbs), throwaway_signature)
        if self._linter is not None:
            _refuse_if_blocking(await self._linter.lint_crl(linted_der), what)
        return await self._sign_tbs(tbs, signature_algorithm_der(linted_der))

    async def request(self, builder: x509.CertificateSigningRequestBuilder) -> x509.CertificateSigningRequest:
        """Sign the CA's own certificate request (for a parent CA to certify). A request carries the
        signer's public key, so no throwaway copy can stand in for it and there is nothing to lint: the
        HSM signs the request as cryptography encodes it. The guard still applies."""
        await self.guard.check()
        try:
            return builder.sign(self._ca_key, self.hash_algorithm)
        except HsmError as exc:
            await self.guard.hsm_failed(exc)
            raise

    async def _sign_tbs(self, tbs: bytes, algorithm: bytes) -> bytes:
        """The one place where the HSM signs a certificate or a CRL: exactly ``tbs``; ``algorithm`` is
        the DER signatureAlgorithm of the linted copy."""
        try:
            signature = self._ca_key.sign(tbs, self._signature_algorithm)
        except HsmError as exc:
            await self.guard.hsm_failed(exc)
            raise
        return assemble(tbs, algorithm, signature)


@asynccontextmanager
async def open_signer(
    config: Config, ca_key: HsmEcPrivateKey, writer: GroupCommitWriter | None = None
) -> AsyncIterator[Signer]:
    """A signer for one command (ceremony, ``entity enrol``, ``ca renew-tls``): the CA home's guard and, unless
    the configuration disables it, a linter helper of its own for the command's duration."""
    linter = await AsyncLinter.start(find_linter_binary(config.lint_binary)) if config.lint_enabled else None
    try:
        yield Signer(ca_key, linter, make_guard(config, writer))
    finally:
        if linter is not None:
            await linter.close()


def _refuse_if_blocking(report: LintReport, what: str) -> None:
    if not report.ok:
        findings = "; ".join(f"{f.lint}: {f.details}".rstrip(": ") for f in report.blocking)
        raise LintFailed(f"pre-issuance lint blocked the {what}: {findings or report.parse_error}")
