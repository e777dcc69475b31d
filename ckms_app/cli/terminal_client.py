"""Where the terminal's tools connect and as whom: the CA's API with the person's own credential.

On the certificate-management terminal there is no CA home: the terminal role installs the CA
certificate and the EST endpoint in ``/etc/ckms-terminal`` (``ca.pem``, ``est.conf``) and each person's
key and certificate in ``/etc/ckms-terminal/people/<login>/`` (0700, theirs alone). The tools use that
person's credential by default, so every request and audit record names the individual (A.29). On a
CA home (``--home`` or ``$CKMS_HOME``, tests and the CA host) the home's configuration and the role's
credential are used, as for ``ckms issue``. ``--server``, ``--ca-cert``, ``--cert`` and ``--key``
override either.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config, resolve_home
from ckms_app.errors import ClientError
from ckms_app.i18n import DEFAULT, translator

TERMINAL_DIR = Path(os.environ.get("CKMS_TERMINAL_DIR", "/etc/ckms-terminal"))


@dataclass(frozen=True)
class Endpoint:
    """The daemon's TLS listener and the CA certificate that must have issued its certificate."""

    host: str
    port: int
    ca_cert: Path
    # on a CA home after a rollover: the other generations' CA certificates (the daemon's TLS certificate
    # may come from any of them); on the terminal, ca.pem holds them all
    more_ca_certs: tuple[Path, ...] = ()


def add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home", help="CA home directory (default: $CKMS_HOME; else the terminal's configuration)"
    )
    p.add_argument("--server", help="the CA's API, https://HOST:PORT (default: the home's or est.conf's)")
    p.add_argument("--ca-cert", type=Path, help="CA certificate (PEM) the server must chain to")
    p.add_argument("--role", default="operator", help="with a CA home: use this role's credentials")
    p.add_argument("--cert", type=Path, help="your client certificate (PEM)")
    p.add_argument("--key", type=Path, help="your client private key (PEM)")


def _url(value: str, _: Callable[[str], str]) -> tuple[str, int]:
    url = urllib.parse.urlsplit(value)
    if url.scheme != "https" or not url.hostname:
        raise ClientError(_("{url}: the CA's API is an https:// URL").format(url=value))
    return url.hostname, url.port or 443


def resolve(args: argparse.Namespace, _: Callable[[str], str]) -> tuple[Endpoint, Credentials]:
    """The endpoint and the person's credential for these arguments (see the module's docstring)."""
    home = getattr(args, "home", None) or os.environ.get("CKMS_HOME")
    cert, key = args.cert, args.key
    if bool(cert) != bool(key):
        raise ClientError(_("--cert and --key go together"))
    if home:
        config = load_config(resolve_home(home))
        host, port = _url(config.server.est_url, _)
        ca_cert = config.ca_cert
        more = tuple(g.cert for g in config.generations()[1:])
        creds = Credentials(cert, key) if cert else Credentials.for_role(config, args.role, _)
    else:
        more = ()
        est = TERMINAL_DIR / "est.conf"
        url = None
        if est.exists():
            for line in est.read_text().splitlines():
                if line.startswith("EST_URL="):
                    url = line.partition("=")[2].strip()
        if args.server is None and url is None:
            raise ClientError(
                _("no CA home and no {file}: give --home, or --server and --ca-cert").format(file=est)
            )
        host, port = _url(args.server or url or "", _)
        ca_cert = TERMINAL_DIR / "ca.pem"
        if cert:
            creds = Credentials(cert, key)
        else:
            me = TERMINAL_DIR / "people" / getpass.getuser()
            creds = Credentials(me / "cert.pem", me / "key.pem")
            if not creds.cert.exists():
                raise ClientError(
                    _("no enrolled credential in {directory}: enrol first, or give --cert and --key").format(
                        directory=me
                    )
                )
    if args.server is not None:
        host, port = _url(args.server, _)
    if args.ca_cert is not None:
        ca_cert, more = args.ca_cert, ()
    return Endpoint(host, port, ca_cert, more), creds


class TerminalClient(CkmsClient):
    """:class:`CkmsClient` (one keep-alive mutual-TLS connection, errors in the person's language) for an
    explicit endpoint, with the search, recall and streamed export calls."""

    def __init__(self, endpoint: Endpoint, creds: Credentials, timeout: float = 60.0, *, lang: str = DEFAULT):
        # The parent's fields, set from the endpoint instead of a CA home's configuration.
        self._host, self._port = endpoint.host, endpoint.port
        self._ = translator(lang)
        self._lang = lang
        self._ctx = ssl.create_default_context(cafile=str(endpoint.ca_cert))
        for other in endpoint.more_ca_certs:
            self._ctx.load_verify_locations(cafile=str(other))
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            self._ctx.load_cert_chain(creds.cert, creds.key)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                self._("cannot load client credentials {cert}: {reason}").format(cert=creds.cert, reason=exc)
            ) from None
        self._timeout = timeout
        self._creds = creds
        self._conn: http.client.HTTPSConnection | None = None

    def __enter__(self) -> TerminalClient:
        return self

    def search(self, query: Mapping[str, str]) -> dict[str, Any]:
        return self._json("GET", "/api/v1/certificates?" + urllib.parse.urlencode(query))

    def recall(self, by: str, names: list[str], reason: str, *, dry_run: bool) -> dict[str, Any]:
        return self._json(
            "POST", "/api/v1/recalls", {"by": by, "names": names, "reason": reason, "dry_run": dry_run}
        )

    def export(self, query: Mapping[str, str]) -> Iterator[bytes]:
        """The inventory as the daemon streams it, chunk by chunk (its own connection: it may be long)."""
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ctx, timeout=self._timeout)
        try:
            try:
                conn.request(
                    "GET",
                    "/api/v1/inventory?" + urllib.parse.urlencode(query),
                    headers={"Accept-Language": self._lang},
                )
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(
                    self._("connection to {host}:{port} failed: {reason}").format(
                        host=self._host, port=self._port, reason=exc
                    )
                ) from None
            if resp.status != 200:
                data = resp.read()
                try:
                    doc = json.loads(data)
                except ValueError:
                    doc = {"message": data.decode(errors="replace")}
                raise ClientError(
                    self._("{message} (HTTP {status}, {code})").format(
                        message=doc.get("message", self._("request failed")),
                        status=resp.status,
                        code=doc.get("error", "error"),
                    )
                )
            while chunk := resp.read(65536):
                yield chunk
        finally:
            conn.close()
