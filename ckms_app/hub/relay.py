"""The terminal's CRL relay: from the CA to the IoT hub, checked, within the interval (A.37, A.46).

Each round fetches the CA's full CRLs over its plain-HTTP listener (the CA talks only to the terminal),
one URL per CA key generation (after a key rollover the old key keeps publishing CRLs for its
certificates beside the new key's), checks each (:func:`ckms_app.hub.crl_check.check_crl`: signature by a
trusted CA chosen by key, freshness, never older than the last one relayed *from that CA*), reads the
hub's ``/status`` over TLS pinned to the hub's certificate, and uploads each CRL the hub holds an older
one of. A round's verdict is ``current`` or a list of problems; the caller alerts on problems (the hub
behind the CA for any issuer after the round, the hub without a usable CRL for some CA, the CA or the
hub unreachable, a CRL that fails its checks). Rounds run every ``interval`` (a few minutes), well inside
the hour A.37 allows from revocation to the hub.

"Hub current" means: for every CRL fetched this round, the hub holds that issuer's CRL with a number at
least the fetched one, and the hub reports itself usable (every CA it trusts has a CRL).

The state file keeps the last number relayed per issuer key id: ``{"numbers": {"<key id hex>": n},
"number": <highest>}`` (``number`` only so that a downgraded relay still reads it). The one-CA format
``{"number": n}`` is still read: that number was the only CA's, and it becomes the floor of every trusted
CA (kept in the file from the next write on) since the file does not say which CA it was; the CA numbers
all its issuers' CRLs from one sequence, so a newer issuer's CRLs are above it anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ckms_app.errors import ConfigError, CrlRejected
from ckms_app.hub.crl_check import CheckedCrl, ca_key_id, check_crl

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RelaySettings:
    crl_urls: Sequence[str]  # one full CRL per CA key, e.g. http://ca1:8080/crl/full.crl
    ca_cert: Path  # the trusted CA certificates (PEM, one or several)
    hub_url: str  # the hub's upload listener, e.g. https://hub:8444
    hub_cert: Path  # the hub's own (pinned) certificate
    state_file: Path  # the number of the last CRL relayed per issuer (replay protection across restarts)


@dataclass
class IssuerRound:
    """One issuer's part of a round."""

    fetched: int
    hub_before: int | None = None
    hub_after: int | None = None
    uploaded: bool = False


@dataclass
class RoundResult:
    """A round. ``fetched`` is the highest number fetched; ``hub_before``/``hub_after`` the hub's
    top-level ``crl_number`` (its newest CRL); ``issuers`` the same per issuer key id."""

    fetched: int | None = None
    hub_before: int | None = None
    hub_after: int | None = None
    uploaded: bool = False
    hub_age_s: float | None = None
    problems: list[str] = field(default_factory=list)
    issuers: dict[str, IssuerRound] = field(default_factory=dict)

    @property
    def current(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "hub_before": self.hub_before,
            "hub_after": self.hub_after,
            "uploaded": self.uploaded,
            "hub_age_s": self.hub_age_s,
            "current": self.current,
            "problems": self.problems,
            "issuers": {key_id: asdict(i) for key_id, i in self.issuers.items()},
        }


class CrlRelay:
    def __init__(self, settings: RelaySettings) -> None:
        if not settings.crl_urls:
            raise ConfigError("the relay needs at least one CRL URL")
        self._s = settings
        try:
            self._cas = x509.load_pem_x509_certificates(settings.ca_cert.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{settings.ca_cert}: no CA certificate (PEM): {exc}") from None
        self._hub_tls = ssl.create_default_context(cafile=str(settings.hub_cert))
        self._hub_tls.check_hostname = False  # pinned: the one certificate is the trust anchor

    # --- the state file -----------------------------------------------------------------------
    def _last_relayed(self) -> dict[str, int]:
        """The number last relayed per issuer key id; a one-CA state file's number for every trusted CA."""
        try:
            state = json.loads(self._s.state_file.read_text())
            if "numbers" in state:
                return {str(k): int(v) for k, v in dict(state["numbers"]).items()}
            legacy = int(state["number"])
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return {}
        return {ca_key_id(ca): legacy for ca in self._cas}

    def _remember(self, relayed: dict[str, int]) -> None:
        numbers = self._last_relayed()
        numbers |= {k: max(n, numbers.get(k, n)) for k, n in relayed.items()}
        tmp = self._s.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"numbers": numbers, "number": max(numbers.values(), default=None)}) + "\n")
        tmp.replace(self._s.state_file)

    # --- the two ends ---------------------------------------------------------------------------
    def _hub(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self._s.hub_url.rstrip("/") + path, data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", "application/pkix-crl")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self._hub_tls) as resp:  # noqa: S310  # nosec B310
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def _hub_status(self) -> dict[str, Any]:
        status, body = self._hub("GET", "/status")
        if status != 200:
            raise OSError(f"HTTP {status}")
        return dict(json.loads(body))

    def _fetch(self, now: dt.datetime, result: RoundResult) -> dict[str, CheckedCrl]:
        """Each URL's CRL, checked against the issuer's last relayed number; the newest per issuer."""
        floors = self._last_relayed()
        checked: dict[str, CheckedCrl] = {}
        for url in self._s.crl_urls:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310  # nosec B310 - scheme checked
                    der = resp.read()
                crl = check_crl(der, self._cas, now=now, current_numbers=floors)
            except (urllib.error.URLError, OSError) as exc:
                result.problems.append(f"CA CRL not fetched from {url}: {exc}")
                continue
            except CrlRejected as exc:
                result.problems.append(f"CA CRL from {url} refused: {exc}")
                continue
            held = checked.get(crl.issuer_key_id)
            if held is None or crl.number > held.number:
                checked[crl.issuer_key_id] = crl
        return checked

    def run_once(self, now: dt.datetime | None = None) -> RoundResult:
        now = now or dt.datetime.now(dt.UTC)
        result = RoundResult()
        urls_ok = all(u.startswith(("http://", "https://")) for u in self._s.crl_urls)
        if not urls_ok or not self._s.hub_url.startswith("https://"):
            raise ValueError("the CRL URLs must be http(s) and the hub URL https")
        fetched = self._fetch(now, result)
        result.issuers = {key_id: IssuerRound(c.number) for key_id, c in fetched.items()}
        result.fetched = max((c.number for c in fetched.values()), default=None)
        try:
            before = self._hub_status()
            result.hub_before = before.get("crl_number")
            self._upload_behind(fetched, before, result)
            after = self._hub_status()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            result.problems.append(f"hub {self._s.hub_url} unreachable: {exc}")
            return result
        result.hub_after = after.get("crl_number")
        result.hub_age_s = after.get("age_s")
        self._judge(fetched, after, result)
        return result

    def _upload_behind(
        self, fetched: dict[str, CheckedCrl], before: dict[str, Any], result: RoundResult
    ) -> None:
        """Upload each fetched CRL the hub holds an older one of; remember what the hub now holds."""
        relayed: dict[str, int] = {}
        for key_id, crl in fetched.items():
            issuer = result.issuers[key_id]
            issuer.hub_before = _hub_number(before, key_id)
            if issuer.hub_before is not None and issuer.hub_before >= crl.number:
                relayed[key_id] = crl.number
                continue
            status, body = self._hub("PUT", "/crl", crl.der)
            if status in (200, 201):
                issuer.uploaded = status == 201
                relayed[key_id] = crl.number
            else:
                result.problems.append(
                    f"hub refused CRL {crl.number} of CA {key_id}: HTTP {status} {body.decode()[:200]}"
                )
        result.uploaded = any(i.uploaded for i in result.issuers.values())
        if relayed:
            self._remember(relayed)

    @staticmethod
    def _judge(fetched: dict[str, CheckedCrl], after: dict[str, Any], result: RoundResult) -> None:
        """The hub is current when it is usable and holds, per fetched issuer, at least the fetched number."""
        if not after.get("usable", False):
            result.problems.append(f"hub has no usable CRL: {after.get('reason') or 'unknown'}")
        for key_id, crl in fetched.items():
            issuer = result.issuers[key_id]
            issuer.hub_after = _hub_number(after, key_id)
            if (issuer.hub_after or 0) < crl.number:
                result.problems.append(
                    f"hub holds CRL {issuer.hub_after} of CA {key_id}, the CA's newest is {crl.number}"
                )


def _hub_number(status: dict[str, Any], key_id: str) -> int | None:
    """The hub's number for one issuer; a one-CA hub (no ``issuers``) holds its one CRL for any."""
    issuers = status.get("issuers")
    if not isinstance(issuers, dict):
        number = status.get("crl_number")
        return int(number) if number is not None else None
    number = dict(issuers.get(key_id) or {}).get("crl_number")
    return int(number) if number is not None else None
