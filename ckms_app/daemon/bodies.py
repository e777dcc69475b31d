"""Request bodies, read whole and bounded, then decoded: EST's base64 PKCS#10 and the API's JSON objects.

Why a module of its own: a body arrives however the client's TCP stack and HTTP library cut it (one
segment or many, ``Content-Length`` or chunked, gzip-encoded), and ``StreamReader.read(n)`` returns
whatever has arrived so far. Every route reads through :func:`read_body`, which waits for the end of
the body (or the limit), so a request sent in three segments is the same request as one sent in one.
Every way a body can fail to be read or decoded is a :class:`~ckms_app.errors.CkmsError` with a 4xx
status here, never an exception from the HTTP library or the JSON decoder.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ckms_app.errors import BadRequest, BodyTooLarge, CsrRejected

#: Deepest JSON nesting the API accepts: its objects are flat; the decoder's recursion is not a limit.
MAX_JSON_DEPTH = 16
_BROKEN = "ckms.body_broken"


def connection_unusable(request: web.Request) -> bool:
    """Whether the request's body broke mid-stream: the HTTP parser has lost its place on this connection,
    so the answer must close it (``Connection: close``) instead of waiting for a next request."""
    return bool(request.get(_BROKEN))


async def read_body(request: web.Request, limit: int) -> bytes:
    """All of the body, however it arrives, or :class:`BodyTooLarge` as soon as it exceeds ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body is {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds {limit} bytes")
    except (RequestPayloadError, HttpProcessingError) as exc:
        # A broken gzip stream, a bad chunk size, a body shorter than its Content-Length. The rest of
        # this body is lost: mark it ended, or aiohttp drains it after the answer, meets the same error
        # again and logs it as an unhandled exception with a traceback.
        request.content.feed_eof()
        request[_BROKEN] = True  # and the connection cannot carry another request: see connection_unusable
        reason = " ".join(str(getattr(exc, "message", None) or exc or type(exc).__name__).split())
        raise BadRequest(f"request body could not be read: {reason}", code="body_unreadable") from None


def base64_limit(max_der_bytes: int) -> int:
    """How long a base64 body of a ``max_der_bytes`` DER request may be: 4/3 plus line breaks and slack."""
    return max_der_bytes * 4 // 3 + max_der_bytes // 32 + 64


async def read_est_body(request: web.Request, max_der_bytes: int) -> bytes:
    """The DER PKCS#10 request from an EST body (RFC 7030 §4.2.1: base64, ``application/pkcs10``)."""
    ctype = request.headers.get("Content-Type", "")
    if ctype and not ctype.startswith("application/pkcs10"):
        raise CsrRejected(f"Content-Type must be application/pkcs10, not {ctype}", code="csr_content_type")
    limit = base64_limit(max_der_bytes)
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge as exc:
        raise CsrRejected(f"{exc} (base64)", code="csr_too_large") from None
    return decode_est_base64(raw)


def decode_est_base64(raw: bytes) -> bytes:
    """Base64 with any line breaks (RFC 7030 §4.2.1 allows them), nothing else."""
    try:
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CsrRejected(
            "body is not base64: EST expects a base64-encoded DER PKCS#10 request", code="csr_malformed"
        ) from None


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object of at most ``limit`` bytes and :data:`MAX_JSON_DEPTH` levels."""
    return decode_json_object(await read_body(request, limit))


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or :class:`BadRequest` saying what is wrong with it."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(
            f"JSON nested {depth} levels deep; the API accepts at most {MAX_JSON_DEPTH}", code="bad_json"
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"body is not JSON: {exc}", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", code="bad_json")
    return body


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting outside strings, counted before decoding (the decoder recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
