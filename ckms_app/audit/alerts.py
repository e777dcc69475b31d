"""Real-time alerts for account, role and access-control changes (F.15).

The guidance asks that user and especially access-right management events be watched in real
time and reach the CKMS administrator and authority as they happen. Every such change, once
committed to the audit trail, is sent to:

* syslog (facility authpriv, priority warning) through the local socket, where the host's log
  shipping and the ``audit`` role pick it up; when the host has no syslog socket (a container, a
  test) the alert goes to ``log/alerts.log`` in the CA home instead and the result says so;
* an optional command (``[alerts] command = ["/usr/local/bin/page-admins"]``) that gets the event
  as one JSON object on stdin;
* an optional webhook (``[alerts] webhook = "https://..."``) that gets the same JSON by POST.

An alert never carries a secret: only who did what to whom, when, and the outcome.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

from ckms_app.config import AlertConfig

log = logging.getLogger("ckms.alerts")

# Audit actions that raise an alert: account, role-grant and ACL changes (and refusals of them), and
# a changed CA configuration.
ALERT_ACTION_PREFIXES = ("entity.", "acl.", "config.")


def is_alerting(action: str) -> bool:
    return action.startswith(ALERT_ACTION_PREFIXES)


@dataclass(frozen=True)
class Delivery:
    channel: str  # syslog | syslog-fallback-file | command | webhook
    ok: bool
    detail: str = ""


def send_alert(config: AlertConfig, event: dict[str, Any]) -> list[Delivery]:
    """Deliver one event on every configured channel; a failing channel does not stop the others."""
    message = json.dumps({"ckms_alert": event}, sort_keys=True, default=str)
    results: list[Delivery] = []
    if config.syslog:
        results.append(_to_syslog(config, message))
    if config.command:
        results.append(_to_command(config, message))
    if config.webhook:
        results.append(_to_webhook(config, message))
    for r in results:
        if not r.ok:
            log.warning("alert via %s failed: %s", r.channel, r.detail)
    return results


def _to_syslog(config: AlertConfig, message: str) -> Delivery:
    address = config.syslog_address
    if os.path.exists(address):
        try:
            handler = logging.handlers.SysLogHandler(
                address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
            )
            try:
                handler.ident = "ckms: "
                handler.emit(
                    logging.LogRecord("ckms.alerts", logging.WARNING, __file__, 0, message, None, None)
                )
            finally:
                handler.close()
            return Delivery("syslog", True, address)
        except OSError as exc:
            reason = f"syslog socket {address}: {exc}"
    else:
        reason = f"no syslog socket at {address}"
    if config.fallback_file is None:
        return Delivery("syslog", False, reason)
    config.fallback_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(config.fallback_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{socket.gethostname()} ckms: {message}\n")
    return Delivery("syslog-fallback-file", True, f"{reason}; wrote {config.fallback_file}")


def _to_command(config: AlertConfig, message: str) -> Delivery:
    try:
        proc = subprocess.run(
            list(config.command),
            input=message + "\n",
            text=True,
            capture_output=True,
            timeout=config.timeout_seconds,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Delivery("command", False, f"{config.command[0]}: {exc}")
    if proc.returncode != 0:
        return Delivery(
            "command", False, f"{config.command[0]} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
        )
    return Delivery("command", True, config.command[0])


def _to_webhook(config: AlertConfig, message: str) -> Delivery:
    assert config.webhook is not None
    request = urllib.request.Request(
        config.webhook, data=message.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        # the scheme is http(s) only, checked when ckms.toml is loaded (config._alerts)
        with urllib.request.urlopen(request, timeout=config.timeout_seconds) as resp:  # noqa: S310  # nosec B310
            return Delivery("webhook", 200 <= resp.status < 300, f"HTTP {resp.status}")
    except OSError as exc:
        return Delivery("webhook", False, str(exc))
