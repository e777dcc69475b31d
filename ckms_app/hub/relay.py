"""The terminal's CRL relay: from the CA to the IoT hub, checked, within the interval (A.37, A.46).

Each round fetches the CA's full CRL over its plain-HTTP listener (the CA talks only to the terminal),
checks it (:func:`ckms_app.hub.crl_check.check_crl`: signature, issuer, freshness, never older than the
last one relayed), reads the hub's ``/status`` over TLS pinned to the hub's certificate, and uploads the
CRL when the hub holds an older one. A round's verdict is ``current`` or a list of problems; the caller
alerts on problems (the hub behind the CA after the round, the hub's CRL past its nextUpdate, the CA or
the hub unreachable, a CRL that fails its checks). Rounds run every ``interval`` (a few minutes), well
inside the hour A.37 allows from revocation to the hub.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ckms_app.errors import CrlRejected
from ckms_app.hub.crl_check import check_crl

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RelaySettings:
    crl_url: str  # the CA's full CRL, e.g. http://ca1:8080/crl/full.crl
    ca_cert: Path
    hub_url: str  # the hub's upload listener, e.g. https://hub:8444
    hub_cert: Path  # the hub's own (pinned) certificate
    state_file: Path  # the number of the last CRL relayed (replay protection across restarts)


@dataclass
class RoundResult:
    fetched: int | None = None
    hub_before: int | None = None
    hub_after: int | None = None
    uploaded: bool = False
    hub_age_s: float | None = None
    problems: list[str] = field(default_factory=list)

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
        }


class CrlRelay:
    def __init__(self, settings: RelaySettings) -> None:
        self._s = settings
        self._ca = x509.load_pem_x509_certificate(settings.ca_cert.read_bytes())
        self._hub_tls = ssl.create_default_context(cafile=str(settings.hub_cert))
        self._hub_tls.check_hostname = False  # pinned: the one certificate is the trust anchor

    def _last_relayed(self) -> int | None:
        try:
            return int(json.loads(self._s.state_file.read_text())["number"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _remember(self, number: int) -> None:
        tmp = self._s.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"number": number}) + "\n")
        tmp.replace(self._s.state_file)

    def _hub(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self._s.hub_url.rstrip("/") + path, data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", "application/pkix-crl")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self._hub_tls) as resp:  # noqa: S310  # nosec B310
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def run_once(self, now: dt.datetime | None = None) -> RoundResult:
        now = now or dt.datetime.now(dt.UTC)
        result = RoundResult()
        if not self._s.crl_url.startswith(("http://", "https://")) or not self._s.hub_url.startswith(
            "https://"
        ):
            raise ValueError("the CRL URL must be http(s) and the hub URL https")
        checked = None
        try:
            with urllib.request.urlopen(self._s.crl_url, timeout=TIMEOUT_S) as resp:  # noqa: S310  # nosec B310 - scheme checked
                der = resp.read()
            checked = check_crl(der, self._ca, now=now, current_number=self._last_relayed())
            result.fetched = checked.number
        except (urllib.error.URLError, OSError) as exc:
            result.problems.append(f"CA CRL not fetched from {self._s.crl_url}: {exc}")
        except CrlRejected as exc:
            result.problems.append(f"CA CRL refused: {exc}")
        try:
            status, body = self._hub("GET", "/status")
            if status != 200:
                raise OSError(f"HTTP {status}")
            held = json.loads(body)
            result.hub_before = held.get("crl_number")
            if checked is not None and (result.hub_before is None or result.hub_before < checked.number):
                status, body = self._hub("PUT", "/crl", checked.der)
                if status in (200, 201):
                    result.uploaded = status == 201
                    self._remember(checked.number)
                else:
                    result.problems.append(
                        f"hub refused CRL {checked.number}: HTTP {status} {body.decode()[:200]}"
                    )
            elif checked is not None:
                self._remember(checked.number)
            status, body = self._hub("GET", "/status")
            held = json.loads(body) if status == 200 else {}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            result.problems.append(f"hub {self._s.hub_url} unreachable: {exc}")
            return result
        result.hub_after = held.get("crl_number")
        result.hub_age_s = held.get("age_s")
        if not held.get("usable", False):
            result.problems.append(f"hub has no usable CRL: {held.get('reason') or 'unknown'}")
        elif result.fetched is not None and (result.hub_after or 0) < result.fetched:
            result.problems.append(f"hub holds CRL {result.hub_after}, the CA's newest is {result.fetched}")
        return result
