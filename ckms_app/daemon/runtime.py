"""What one worker's handlers share: the typed :class:`Runtime`, built once at start and closed once at stop."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy.engine import Engine

from ckms_app.audit.hsm_sessions import CLOSE, OPEN, failed_open_detail, record_session, session_detail
from ckms_app.authority.ca_bundle import trusted_certificates
from ckms_app.authority.crl_publisher import CrlIssuer, CrlPublisher
from ckms_app.authority.enrolment import EnrolmentDesk
from ckms_app.authority.guard import ServiceState, SigningGuard, make_guard
from ckms_app.authority.issuance import Issuer
from ckms_app.authority.lint_supervisor import SupervisedLinter
from ckms_app.authority.linter import find_linter_binary
from ckms_app.authority.rbac import PrincipalCache
from ckms_app.authority.signer import Signer
from ckms_app.config import CaGeneration, Config
from ckms_app.cpu_stages import StageClock
from ckms_app.errors import HsmError
from ckms_app.hsm.token import HsmEcPrivateKey, Token
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.writer import GroupCommitWriter


@dataclass
class Runtime:
    """Everything the handlers share; built once at start, torn down once at stop."""

    config: Config
    token: Token
    ca_key: HsmEcPrivateKey
    ca_cert: x509.Certificate
    cacerts_body: bytes  # the /cacerts answer: base64 PKCS#7 of every CA generation, the links and the chain
    writer: GroupCommitWriter
    reader: Engine
    linter: SupervisedLinter | None  # None when linting is disabled in ckms.toml; restarts its helper
    issuer: Issuer
    enrolment: EnrolmentDesk  # people's identity certificates from a CSR and a one-time code (EST)
    publisher: CrlPublisher
    principals: PrincipalCache
    state: ServiceState  # the error state shared by all workers (E.36)
    guard: SigningGuard  # asked before every signature: error state + clock (A.33)
    purpose: str = "serve"  # why this process holds a token session (its hsm.session.* records)
    # generation → its key's identifier (SKI hex), for every key that signs CRLs (docs/ca-key-rollover.md)
    crl_key_ids: dict[int, str] = field(default_factory=dict)
    # the retired keys (they sign CRLs only), with their CA certificates: self-tested like the active one
    retired_keys: list[tuple[CaGeneration, HsmEcPrivateKey, x509.Certificate]] = field(default_factory=list)
    # The newest CRL of each generation and kind as served ("1/full"): (CRL number, DER). Re-read only when a newer one is published,
    # so a CRL download allocates nothing as large as the CRL (a 100,000-entry CRL is ~4 MB).
    served_crls: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # CPU per issuance stage for the benchmark (cpu_stages); off unless CKMS_STAGE_CLOCK_DIR is set
    stages: StageClock = field(default_factory=StageClock)

    async def close(self) -> None:
        """Release what :func:`open_runtime` opened: the token, its closing recorded (F.08), then the writer."""
        if self.linter is not None:
            await self.linter.close()
        self.issuer.close()
        self.principals.close()
        detail = session_detail(self.token, self.purpose)
        self.token.close()
        await record_session(self.writer, CLOSE, detail)
        self.writer.close()


RUNTIME = web.AppKey("runtime", Runtime)


def runtime_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def open_runtime(config: Config, purpose: str = "serve", stages: StageClock | None = None) -> Runtime:
    """Open the database, the token session and the linter of one worker; the session goes on the trail.
    ``stages``: the benchmark's CPU-per-stage counters (off when not given)."""
    stages = stages or StageClock()
    engine = open_engine(config.database_url)
    migrate(engine)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    stages.watch_thread("commit_audit", writer.thread)
    stages.watch_counter("commits", lambda: writer.commits)
    stages.watch_counter("units", lambda: writer.units)
    token = await _open_token(config, writer, purpose)
    key = token.load_ec_key(config.ca_key_label)
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    retired = [
        (g, token.load_ec_key(g.key_label), x509.load_pem_x509_certificate(g.cert.read_bytes()))
        for g in config.signing_generations()[1:]
    ]
    linter = (
        await SupervisedLinter.start(find_linter_binary(config.lint_binary)) if config.lint_enabled else None
    )
    guard = make_guard(config, writer)
    signer = Signer(key, linter, guard, stages)
    oldest = min(g.generation for g in config.signing_generations())
    issuers = [
        CrlIssuer.of(config, config.active_generation, signer, ca_cert, oldest == config.ca_generation)
    ]
    issuers += [
        CrlIssuer.of(config, g, Signer(k, linter, guard), c, oldest == g.generation) for g, k, c in retired
    ]
    cacerts = base64.encodebytes(
        pkcs7.serialize_certificates(trusted_certificates(config), serialization.Encoding.DER)
    )
    return Runtime(
        config=config,
        token=token,
        ca_key=key,
        ca_cert=ca_cert,
        cacerts_body=cacerts,
        writer=writer,
        reader=engine,
        linter=linter,
        issuer=Issuer(config, signer, ca_cert, writer, engine, stages),
        enrolment=EnrolmentDesk(config, signer, ca_cert, writer),
        publisher=CrlPublisher(config, issuers, writer, engine),
        principals=PrincipalCache(engine),
        state=guard.state,
        guard=guard,
        purpose=purpose,
        crl_key_ids={i.generation: i.key_id for i in issuers},
        retired_keys=retired,
        stages=stages,
    )


async def _open_token(config: Config, writer: GroupCommitWriter, purpose: str) -> Token:
    """Log in to the token; the login, refused or not, goes on the trail with the OS user (F.08, A.31)."""
    try:
        token = Token(config.token)
    except HsmError as exc:
        await record_session(writer, OPEN, failed_open_detail(config.token, purpose, exc), outcome="error")
        writer.close()
        raise
    await record_session(writer, OPEN, session_detail(token, purpose))
    return token
