"""The pre-issuance linter, end to end with the real ckms-lint binary (built on first use).

Every test drives :class:`AsyncLinter`, the one client, on an event loop of its own (the ``runner``
fixture): a helper never outlives its test, and an assertion inside a coroutine fails the test.

Certificates the builder refuses to make (bad serials, duplicate extensions, inverted validity, wrong
time encodings) are made by editing a good certificate's DER and re-signing the TBS with the test key.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ckms_app.authority import linter as linter_module
from ckms_app.authority.linter import AsyncLinter, LintReport, find_linter_binary
from ckms_app.errors import LintUnavailable
from ckms_lab import lint_bench

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms test CA")])
_ORDER = {  # group orders n (SEC 2): n - d is the negation of d
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}


@pytest.fixture
def linter(lint_bin: Path, runner: asyncio.Runner) -> Iterator[AsyncLinter]:
    """A helper with the default (private-CA) sources on the test's loop, closed after the test."""
    lt = runner.run(AsyncLinter.start(lint_bin))
    yield lt
    runner.run(lt.close())


# --- certificate and DER helpers ------------------------------------------------------------------


def leaf_builder(
    subject: str | None = "device-0001", key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.CertificateBuilder, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()), critical=False
        )
    )
    return builder, key


def key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature, False, False, False, False, key_cert_sign, False, False, False)


def sign(builder: x509.CertificateBuilder) -> bytes:
    return builder.sign(CA_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def good_leaf() -> bytes:
    builder, _ = leaf_builder()
    builder = builder.add_extension(key_usage(digital_signature=True), critical=True).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return sign(builder)


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def children(der: bytes) -> list[bytes]:
    """The complete child TLVs inside one constructed DER element."""

    def header(buf: bytes, i: int) -> tuple[int, int]:  # -> (content start, content end)
        first = buf[i + 1]
        if first < 0x80:
            return i + 2, i + 2 + first
        k = first & 0x7F
        start = i + 2 + k
        return start, start + int.from_bytes(buf[i + 2 : start], "big")

    start, end = header(der, 0)
    out, i = [], start
    while i < end:
        _, stop = header(der, i)
        out.append(der[i:stop])
        i = stop
    return out


# TBSCertificate fields: version, serial, signature, issuer, validity, subject, spki, [3] extensions
SERIAL, VALIDITY, EXTENSIONS = 1, 4, 7


def edit_tbs(cert_der: bytes, edit: Callable[[list[bytes]], None]) -> bytes:
    """Apply ``edit`` to the TBS fields and re-sign, as the CA's throwaway-key copy would be."""
    tbs, sig_alg, _ = children(cert_der)
    fields = children(tbs)
    edit(fields)
    new_tbs = tlv(0x30, b"".join(fields))
    signature = CA_KEY.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    return tlv(0x30, new_tbs + sig_alg + tlv(0x03, b"\x00" + signature))


def with_serial(content: bytes) -> bytes:
    def edit(f: list[bytes]) -> None:
        f[SERIAL] = tlv(0x02, content)

    return edit_tbs(good_leaf(), edit)


def blocking_names(report: LintReport) -> set[str]:
    return {f.lint for f in report.blocking}


def crl(*, number: bool = True, aki: bool = True, revoked_at: datetime.datetime | None = None) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA_NAME)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(hours=1))
    )
    if number:
        builder = builder.add_extension(x509.CRLNumber(7), critical=False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()), critical=False
        )
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(0x1234567890ABCDEF)
        .revocation_date(revoked_at or NOW - datetime.timedelta(minutes=5))
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
    )
    return (
        builder.add_revoked_certificate(entry)
        .sign(CA_KEY, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


# --- what gets through and what is blocked --------------------------------------------------------


def test_good_p256_leaf_passes(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    report = runner.run(linter.lint_certificate(good_leaf()))
    assert report.ok, report.blocking
    # the helper's clean answer is recognised by its bytes, not parsed (the hot path's common case)
    assert report is linter_module._CLEAN_REPORT
    assert report.parse_error is None
    assert report.blocking == ()
    assert linter.info["certificate_lints"] > 100


@pytest.mark.parametrize(
    ("serial", "lint"),
    [
        (b"\xff\x01", "e_serial_number_not_positive"),  # -255
        (b"\x00", "e_serial_number_not_positive"),
        (b"\x01" * 21, "e_serial_number_longer_than_20_octets"),
    ],
    ids=["negative", "zero", "21-octets"],
)
def test_bad_serials_are_blocked(
    linter: AsyncLinter, runner: asyncio.Runner, serial: bytes, lint: str
) -> None:
    report = runner.run(linter.lint_certificate(with_serial(serial)))
    assert not report.ok
    assert lint in blocking_names(report)


def test_key_cert_sign_without_ca_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    """RFC 5280 4.2.1.3: keyCertSign asserted => cA MUST be asserted."""
    builder, _ = leaf_builder()
    der = sign(builder.add_extension(key_usage(digital_signature=True, key_cert_sign=True), critical=True))
    report = runner.run(linter.lint_certificate(der))
    assert "e_ext_key_usage_cert_sign_without_ca" in blocking_names(report)


def ca_without_key_cert_sign() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sub CA")]))
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()), critical=False
        )
    )
    return sign(builder)


def test_ca_without_key_cert_sign_needs_cabf_source(
    lint_bin: Path, linter: AsyncLinter, runner: asyncio.Runner
) -> None:
    """CA:true without keyCertSign is a CA/B Forum BR rule, not an RFC 5280 one (5280 only forbids the
    converse), so the default private-CA sources let it through; selecting CABF_BR catches it. This also
    shows the sources override reaching the helper."""
    der = ca_without_key_cert_sign()
    assert runner.run(linter.lint_certificate(der)).ok

    async def strict_lint() -> tuple[dict[str, Any], LintReport]:
        async with await AsyncLinter.start(lint_bin, sources=["RFC5280", "CABF_BR"]) as strict:
            return strict.info, await strict.lint_certificate(der)

    info, report = runner.run(strict_lint())
    assert "CABF_BR" in info["sources"]
    assert "e_ca_key_cert_sign_not_set" in blocking_names(report)


def test_duplicate_extension_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    def duplicate_first(f: list[bytes]) -> None:
        (ext_seq,) = children(f[EXTENSIONS])
        exts = children(ext_seq)
        f[EXTENSIONS] = tlv(0xA3, tlv(0x30, b"".join([*exts, exts[0]])))

    report = runner.run(linter.lint_certificate(edit_tbs(good_leaf(), duplicate_first)))
    assert not report.ok
    # zcrypto may refuse to parse it outright; either way it must not be signed.
    assert report.parse_error is not None or "e_ext_duplicate_extension" in blocking_names(report)


def test_empty_subject_without_san_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    builder, _ = leaf_builder(subject=None)
    der = sign(builder.add_extension(key_usage(digital_signature=True), critical=True))
    assert "e_subject_empty_without_san" in blocking_names(runner.run(linter.lint_certificate(der)))


def test_not_before_after_not_after_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    def swap(f: list[bytes]) -> None:
        nb, na = children(f[VALIDITY])
        f[VALIDITY] = tlv(0x30, na + nb)

    report = runner.run(linter.lint_certificate(edit_tbs(good_leaf(), swap)))
    assert "e_validity_time_not_positive" in blocking_names(report)


def test_generalized_time_before_2050_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    def generalized(f: list[bytes]) -> None:
        nb, _ = children(f[VALIDITY])
        f[VALIDITY] = tlv(0x30, nb + tlv(0x18, b"20350101000000Z"))

    report = runner.run(linter.lint_certificate(edit_tbs(good_leaf(), generalized)))
    assert "e_wrong_time_format_pre2050" in blocking_names(report)


@pytest.mark.parametrize(
    ("curve", "scalar"),
    [
        (ec.SECP256R1(), 3),
        (ec.SECP256R1(), 65536),  # the bound: 2^16 is still small
        (ec.SECP384R1(), 40000),
    ],
    ids=["p256-3", "p256-2^16", "p384-40000"],
)
@pytest.mark.parametrize("negated", [False, True], ids=["d", "minus-d"])
def test_small_private_key_is_blocked(
    linter: AsyncLinter, runner: asyncio.Runner, curve: ec.EllipticCurve, scalar: int, negated: bool
) -> None:
    """A device key anyone can recover (private scalar d <= 2^16, or n - d) is refused: zlint's
    e_ecdsa_small_private_key, run by the helper's faster stand-in (tools/ckms-lint/smallkey.go)."""
    key = ec.derive_private_key(scalar, curve)
    if negated:
        key = ec.derive_private_key(_ORDER[curve.name] - scalar, curve)
    builder, _ = leaf_builder(key=key)
    der = sign(builder)
    report = runner.run(linter.lint_certificate(der))
    assert "e_ecdsa_small_private_key" in blocking_names(report)
    finding = next(f for f in report.blocking if f.lint == "e_ecdsa_small_private_key")
    assert finding.source == "Community"
    assert f"the ECDSA private key is {scalar}," in finding.details
    # a random key of the same curve is not flagged
    builder, _ = leaf_builder(key=ec.generate_private_key(curve))
    fresh = runner.run(linter.lint_certificate(sign(builder)))
    assert "e_ecdsa_small_private_key" not in {f.lint for f in fresh.findings}


def test_garbage_is_a_blocking_parse_error(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    reports = (
        runner.run(linter.lint_certificate(b"definitely not DER")),
        runner.run(linter.lint_crl(b"\x30\x03\x02\x01")),
    )
    for report in reports:
        assert report.parse_error
        assert not report.ok
        assert report.blocking[0].status == "fatal"
    # a bad request does not hurt the helper
    assert runner.run(linter.lint_certificate(good_leaf())).ok


def test_valid_crl_passes_and_broken_crl_is_blocked(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    good = runner.run(linter.lint_crl(crl()))
    assert good.ok, good.blocking
    broken = runner.run(linter.lint_crl(crl(number=False, aki=False)))
    assert {"e_crl_missing_crl_number", "e_crl_has_authority_key_identifier"} <= blocking_names(broken)
    revoked_at = datetime.datetime(1990, 1, 1, tzinfo=datetime.UTC)
    too_early = runner.run(linter.lint_crl(crl(revoked_at=revoked_at)))
    assert "e_crl_revocation_date_too_early" in blocking_names(too_early)


# --- the pipe: concurrency, death, timeouts --------------------------------------------------------


def test_200_concurrent_lints_each_get_their_own_report(linter: AsyncLinter, runner: asyncio.Runner) -> None:
    cases = {
        "good": (good_leaf(), "C", set()),
        "zero": (with_serial(b"\x00"), "C", {"e_serial_number_not_positive"}),
        "long": (with_serial(b"\x01" * 21), "C", {"e_serial_number_longer_than_20_octets"}),
        "crl": (crl(), "R", set()),
        "crl-bad": (crl(number=False), "R", {"e_crl_missing_crl_number"}),
        "garbage": (b"\x00garbage", "C", {"ckms_lint_parse_error"}),
    }
    order = [random.choice(list(cases)) for _ in range(200)]

    async def one(name: str) -> LintReport:
        der, kind, _ = cases[name]
        return await (linter.lint_certificate(der) if kind == "C" else linter.lint_crl(der))

    async def body() -> list[LintReport]:
        return await asyncio.gather(*(one(name) for name in order))

    for name, report in zip(order, runner.run(body()), strict=True):
        expected = cases[name][2]
        assert (expected <= blocking_names(report)) and (report.ok == (not expected)), (name, report)


def test_killed_helper_fails_pending_and_later_calls_quickly(lint_bin: Path, runner: asyncio.Runner) -> None:
    der = good_leaf()

    async def body() -> None:
        lt = await AsyncLinter.start(lint_bin)
        os.kill(lt.pid, signal.SIGSTOP)  # requests queue up unanswered...
        pending = [asyncio.create_task(lt.lint_certificate(der)) for _ in range(20)]
        await asyncio.sleep(0.05)
        os.kill(lt.pid, signal.SIGKILL)  # ...then the helper dies under them
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert time.monotonic() - t0 < 2
        assert all(isinstance(r, LintUnavailable) for r in results), results
        assert "build-ckms-lint.sh" in str(results[0])
        assert not lt.alive
        with pytest.raises(LintUnavailable):
            await asyncio.wait_for(lt.lint_certificate(der), 1)
        await lt.close()
        async with await AsyncLinter.start(lint_bin) as again:  # the daemon's restart is just start()
            assert (await again.lint_certificate(der)).ok

    runner.run(body())


def test_helper_killed_while_idle_fails_every_later_call(lint_bin: Path, runner: asyncio.Runner) -> None:
    """No request in flight when the helper dies: each later call still fails quickly, with the hint."""
    der = good_leaf()

    async def body() -> None:
        lt = await AsyncLinter.start(lint_bin)
        os.kill(lt.pid, signal.SIGKILL)
        t0 = time.monotonic()
        for _ in range(2):
            with pytest.raises(LintUnavailable, match="build-ckms-lint.sh"):
                await asyncio.wait_for(lt.lint_certificate(der), 5)
        assert time.monotonic() - t0 < 2
        assert not lt.alive
        await lt.close()

    runner.run(body())


def test_hung_helper_times_out_instead_of_hanging(lint_bin: Path, runner: asyncio.Runner) -> None:
    der = good_leaf()

    async def body() -> None:
        for request in (der, b"\x30" * (4 << 20)):  # a request larger than the pipe buffer cannot block
            lt = await AsyncLinter.start(lint_bin, timeout=0.3)
            os.kill(lt.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(LintUnavailable, match="no answer"):
                await asyncio.wait_for(lt.lint_crl(request), 5)  # fails, not hangs, without the deadline
            assert time.monotonic() - t0 < 2
            assert not lt.alive
            await lt.close()

    runner.run(body())


def test_close_answers_in_flight_then_refuses(lint_bin: Path, runner: asyncio.Runner) -> None:
    der = good_leaf()

    async def body() -> None:
        lt = await AsyncLinter.start(lint_bin)
        in_flight = [asyncio.create_task(lt.lint_certificate(der)) for _ in range(10)]
        await asyncio.sleep(0)  # let them write their frames
        await lt.close()
        assert all(r.ok for r in await asyncio.gather(*in_flight))
        with pytest.raises(LintUnavailable, match="closed"):
            await lt.lint_certificate(der)
        async with await AsyncLinter.start(lint_bin) as scoped:  # leaving the block closes it too
            pass
        with pytest.raises(LintUnavailable, match="closed"):
            await scoped.lint_certificate(der)

    runner.run(body())


def test_unknown_source_fails_at_start_with_the_helpers_reason(
    lint_bin: Path, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        with pytest.raises(LintUnavailable, match="unknown lint source"):
            await AsyncLinter.start(lint_bin, sources=["NoSuchSource"])

    runner.run(body())


def test_find_linter_binary_order(lint_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LintUnavailable, match="build-ckms-lint.sh"):
        find_linter_binary(tmp_path / "missing")
    monkeypatch.setenv("CKMS_LINT_BIN", str(lint_bin))
    assert find_linter_binary() == lint_bin
    assert find_linter_binary(str(lint_bin)) == lint_bin
    fake = tmp_path / "bin" / "ckms-lint"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CKMS_LINT_BIN")
    monkeypatch.setenv("CKMS_TOOL_CACHE", str(tmp_path))
    assert find_linter_binary() == fake
    monkeypatch.setenv("CKMS_TOOL_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    with pytest.raises(LintUnavailable, match="not found"):
        find_linter_binary()


def test_lint_bench_entry_point_runs(lint_bin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m ckms_lab.lint_bench`` (the micro-benchmark moved out of the CA package)."""
    assert lint_bench.main(["--bench", "40", "--window", "8"]) == 0
    assert "lints/s" in capsys.readouterr().out
