"""The operator client: EST enrolment, revocation, lookups and CRL download (for ``ckms`` CLI).

It speaks the same protocols as any standard EST client, over mutual TLS 1.3 with the role's
client certificate from the CA home (or one given explicitly). Errors come back as
:class:`ClientError` with the server's own explanation, in the client's language: it sends
``Accept-Language`` and the daemon answers in kind (the error codes stay English).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from ckms_app.authority.ca_bundle import generation_certificates, pem_bundle
from ckms_app.config import Config
from ckms_app.errors import ClientError
from ckms_app.i18n import DEFAULT, translator


def _english(text: str) -> str:
    return text


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path

    @classmethod
    def for_role(cls, config: Config, role: str, _: Callable[[str], str] = _english) -> Credentials:
        cert, key = config.home / "credentials" / f"{role}.pem", config.home / "credentials" / f"{role}.key"
        if not cert.exists() or not key.exists():
            raise ClientError(
                _("no credentials for role {role} in {directory}").format(
                    role=repr(role), directory=config.home / "credentials"
                )
            )
        return cls(cert, key)


def client_ssl_context(
    config: Config, creds: Credentials | None, _: Callable[[str], str] = _english
) -> ssl.SSLContext:
    # the daemon's TLS certificate may come from any generation of the CA's key (a rollover)
    ctx = ssl.create_default_context(cadata=pem_bundle(generation_certificates(config)))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if creds is not None:
        try:
            ctx.load_cert_chain(creds.cert, creds.key)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                _("cannot load client credentials {cert}: {reason}").format(cert=creds.cert, reason=exc)
            ) from None
    return ctx


class CkmsClient:
    """One keep-alive connection to the daemon's TLS listener; ``lang`` is the language of its errors and
    of the daemon's answers (``Accept-Language``)."""

    def __init__(
        self, config: Config, creds: Credentials | None, timeout: float = 30.0, *, lang: str = DEFAULT
    ) -> None:
        url = urllib.parse.urlsplit(config.server.est_url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 443
        self._ = translator(lang)
        self._lang = lang
        self._ctx = client_ssl_context(config, creds, self._)
        self._timeout = timeout
        self._creds = creds
        self._conn: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> CkmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        _ = self._
        headers = {"Accept-Language": self._lang, **(headers or {})}
        for attempt in (1, 2):  # one reconnect: the server may have closed an idle keep-alive
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, context=self._ctx, timeout=self._timeout
                )
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise ClientError(
                    _("the server at {host}:{port} is not trusted: {reason}").format(
                        host=self._host, port=self._port, reason=exc.verify_message
                    )
                ) from None
            except (ssl.SSLEOFError, http.client.RemoteDisconnected) as exc:
                # TLS 1.3 checks the client certificate after the client thinks the handshake is
                # done; the server's refusal often arrives as a bare close.
                self.close()
                if attempt == 2:
                    raise ClientError(self._closed_message(exc)) from None
            except ssl.SSLError as exc:
                self.close()
                reason = exc.reason or str(exc)
                if "UNKNOWN_CA" in reason or "CERTIFICATE" in reason.upper():
                    raise ClientError(self._closed_message(exc)) from None
                raise ClientError(
                    _("TLS with {host}:{port} failed: {reason}").format(
                        host=self._host, port=self._port, reason=reason
                    )
                ) from None
            except (ConnectionError, http.client.BadStatusLine) as exc:
                self.close()
                if attempt == 2:
                    raise ClientError(
                        _("connection to {host}:{port} failed: {reason}").format(
                            host=self._host, port=self._port, reason=exc
                        )
                    ) from None
            except OSError as exc:
                self.close()
                raise ClientError(
                    _("cannot reach {host}:{port}: {reason}").format(
                        host=self._host, port=self._port, reason=exc
                    )
                ) from None
        raise AssertionError("unreachable")

    def _closed_message(self, exc: BaseException) -> str:
        _ = self._
        if self._creds is None:
            return _("{host}:{port} closed the connection: {reason}").format(
                host=self._host, port=self._port, reason=exc
            )
        return _(
            "{host}:{port} closed the connection without answering: it most likely refused the "
            "client certificate {cert} (not issued by this CA, or expired)"
        ).format(host=self._host, port=self._port, cert=self._creds.cert)

    def enroll(self, csr_der: bytes, *, renew: bool = False, label: str | None = None) -> x509.Certificate:
        op = "simplereenroll" if renew else "simpleenroll"
        path = f"/.well-known/est/{label}/{op}" if label else f"/.well-known/est/{op}"
        status, _, data = self.request(
            "POST",
            path,
            base64.encodebytes(csr_der),
            {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"},
        )
        if status != 200:
            raise ClientError(
                self._("enrolment refused (HTTP {status}): {answer}").format(
                    status=status, answer=data.decode(errors="replace").strip()
                )
            )
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(data))
        return certs[0]

    def cacerts(self) -> list[x509.Certificate]:
        status, _, data = self.request("GET", "/.well-known/est/cacerts")
        if status != 200:
            raise ClientError(self._("cacerts failed (HTTP {status})").format(status=status))
        return pkcs7.load_der_pkcs7_certificates(base64.b64decode(data))

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, _, data = self.request(
            method, path, body, {"Content-Type": "application/json"} if body else None
        )
        try:
            doc = json.loads(data) if data else {}
        except json.JSONDecodeError:
            doc = {"message": data.decode(errors="replace")}
        if status != 200:
            raise ClientError(
                self._("{message} (HTTP {status}, {code})").format(
                    message=doc.get("message", self._("request failed")),
                    status=status,
                    code=doc.get("error", "error"),
                )
            )
        return doc

    def revoke(self, serial: str, reason: str) -> dict[str, Any]:
        return self._json("POST", "/api/v1/revocations", {"serial": serial, "reason": reason})

    def certificate(self, serial: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/certificates/{urllib.parse.quote(serial)}")

    def publish_crl(self) -> dict[str, Any]:
        return self._json("POST", "/api/v1/crl/publish", {})


def fetch_crl(
    config: Config, which: str = "full", timeout: float = 10.0, generation: int | None = None
) -> bytes:
    """A CRL of one key generation (default: the active key's) from the daemon's plain-HTTP listener."""
    url = urllib.parse.urlsplit(config.server.crl_url(which, generation or config.ca_generation))
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)
    try:
        conn.request("GET", url.path)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise ClientError(f"cannot fetch {url.geturl()}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise ClientError(f"{url.geturl()}: HTTP {resp.status} {data.decode(errors='replace').strip()}")
    return data
