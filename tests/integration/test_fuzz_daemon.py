"""Fuzzing the running daemon (issue 11 item 10): hostile EST bodies and JSON API requests over mutual TLS.

Whatever Hypothesis sends, the daemon answers with a 2xx or a 4xx in the route's own format (an EST
``code: sentence``, a JSON ``{"error", "message"}``), never a 5xx, and its log never shows a traceback.
``make test`` sends a few hundred requests from a fixed seed; ``make fuzz`` many more (tests/fuzz/profiles).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.profiles import examples
from tests.fuzz.strategies import csr_ders, json_bodies

from .conftest import CaHome, Daemon


class Client:
    """One keep-alive mutual-TLS connection as the demo operator, reopened when the daemon closes it."""

    def __init__(self, ca: CaHome) -> None:
        self._ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
        cert, key = ca.cred("operator")
        self._ctx.load_cert_chain(str(cert), str(key))
        host, port = ca.est_url.split("//")[1].split("/")[0].rsplit(":", 1)
        self._where = (host, int(port))
        self._conn: http.client.HTTPSConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(*self._where, context=self._ctx, timeout=30)
            try:
                self._conn.request(method, path, body, headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@pytest.fixture(scope="module")
def client(ca: CaHome, daemon: Daemon) -> Iterator[Client]:
    start = daemon.log.stat().st_size
    c = Client(ca)
    yield c
    c.close()
    with daemon.log.open("rb") as f:
        f.seek(start)
        added = f.read().decode(errors="replace")
    assert "Traceback" not in added and "Unhandled exception" not in added, added[-3000:]


def _est_answer(status: int, body: bytes) -> None:
    assert status < 500, body
    if status >= 400:
        code, sep, sentence = body.decode().partition(": ")
        assert sep and code and sentence.strip(), body


def _json_answer(status: int, body: bytes) -> None:
    assert status < 500, body
    if status >= 400:
        doc = json.loads(body)
        assert doc["error"] and doc["message"], doc


@examples(120, fuzz_factor=25)
@given(csr_ders)
def test_est_enrol_never_fails_on_the_ca_side(client: Client, der: bytes) -> None:
    status, body = client.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.encodebytes(der),
        {"Content-Type": "application/pkcs10"},
    )
    _est_answer(status, body)


@examples(60, fuzz_factor=25)
@given(
    st.binary(max_size=400),
    st.sampled_from(["", "application/pkcs10", "text/plain", "application/pkcs10; charset=latin-1"]),
    st.sampled_from(["simpleenroll", "simplereenroll", "device/simpleenroll", "identity/simpleenroll"]),
)
def test_est_raw_bodies_never_fail_on_the_ca_side(client: Client, raw: bytes, ctype: str, op: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    status, body = client.request("POST", f"/.well-known/est/{op}", raw, headers)
    _est_answer(status, body)


@examples(120, fuzz_factor=25)
@given(json_bodies)
def test_revocation_api_never_fails_on_the_ca_side(client: Client, raw: bytes) -> None:
    status, body = client.request("POST", "/api/v1/revocations", raw, {"Content-Type": "application/json"})
    _json_answer(status, body)


@examples(60, fuzz_factor=25)
@given(st.text(min_size=1, max_size=60))
def test_certificate_lookup_never_fails_on_the_ca_side(client: Client, serial: str) -> None:
    status, body = client.request(
        "GET", "/api/v1/certificates/" + urllib.parse.quote(serial, safe=""), None, {}
    )
    if status == 404 and not body.startswith(b"{"):
        return  # aiohttp's own 404: the quoted text was not one path segment (e.g. it decoded to "/")
    _json_answer(status, body)
