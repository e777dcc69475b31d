"""The plain-HTTP listener: CRLs and the CA certificate (signed, so no transport security), and ``/health``
(served on both listeners)."""

from __future__ import annotations

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ckms_app import __version__
from ckms_app.daemon import guard_routes
from ckms_app.daemon.runtime import runtime_of
from ckms_app.store import queries


async def crl_file(request: web.Request) -> web.Response:
    """``/crl/full.crl``, ``/crl/delta.crl``, ``/crl/base.crl`` (the first key's, for good) and
    ``/crl/g<n>/….crl`` (a later key's, docs/ca-key-rollover.md): the newest published CRL of that kind."""
    rt = runtime_of(request)
    which = request.match_info["which"]
    generation = int(request.match_info.get("generation", "1"))
    key_id = rt.crl_key_ids.get(generation)
    if key_id is None:
        return web.Response(status=404, text="no CA key of that generation signs CRLs\n")
    cache_key = f"{generation}/{which}"
    with rt.reader.connect() as conn:
        number = queries.latest_crl_number(conn, which, key_id)
        if number is None:
            return web.Response(status=404, text="no CRL published yet\n")
        served = rt.served_crls.get(cache_key)
        if served is None or served[0] != number:
            served = rt.served_crls[cache_key] = (number, queries.crl_der(conn, number))
    return web.Response(body=served[1], content_type="application/pkix-crl")


async def ca_certificate(request: web.Request) -> web.Response:
    rt = runtime_of(request)
    return web.Response(
        body=rt.ca_cert.public_bytes(serialization.Encoding.DER), content_type="application/pkix-cert"
    )


async def health(request: web.Request) -> web.Response:
    """200 if the database, the token, the linter, the error state and the clock are all fine, else 503."""
    rt = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        with rt.reader.connect() as conn:
            queries.ping(conn)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - health reports any failure
        checks["database"] = f"error: {type(exc).__name__}"
    checks["hsm"] = "ok" if rt.token.is_alive() else "error: token session lost"
    if rt.linter is not None:
        checks["linter"] = "ok" if rt.linter.alive else "error: linter process exited"
    checks.update(await guard_routes.health_checks(rt))
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "error", "version": __version__, "checks": checks},
        status=200 if ok else 503,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/crl/{which:full|delta|base}.crl", crl_file)
    app.router.add_get("/crl/g{generation:[2-9]|[1-9][0-9]}/{which:full|delta|base}.crl", crl_file)
    app.router.add_get("/crl/ca.crt", ca_certificate)
    app.router.add_get("/health", health)
