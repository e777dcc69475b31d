"""Run-time observation of kernel audit on a host that has its own kernel (the VM CA host): do one
harmless operator action and read back the records it produced. Used by test_audit.py's F.12, F.14,
A.06 and A.31 checks; a lab container cannot run kernel audit, so there they stay at configuration level.
"""

from __future__ import annotations

import re

from ckms_checks import policy

#: The access-control file whose attributes the run-time checks touch (a chmod to its own mode: nothing
#: changes, but the kernel audits the attribute change through the identity watch).
OBSERVED_FILE = "/etc/group"
_AUDIT_ID = re.compile(r"msg=audit\((\d+)\.\d+:(\d+)\)")


def observe_audited_action(host) -> dict[str, list[str]]:
    """Do one harmless operator action now and return the kernel audit records it produced, by event.

    The action: the automation account (logged in over SSH, so its login uid is set) runs ``chmod``
    through its own sudo on :data:`OBSERVED_FILE`, to the mode the file already has. Expected in the log
    (``ausearch --raw``, which keeps the ENRICHED names after the 0x1d separator): the watch's SYSCALL
    + PATH records (key ``ckms-identity``), the execve of the command (key ``ckms_automation``) and
    sudo's ``USER_CMD``. Only events stamped after the action started count. Done once per host and run.
    """
    cache = _OBSERVED.get(host.backend.get_hostname())
    if cache is not None:
        return cache
    user = policy(host, "os_hardening_automation_user") or "ckms-automation"
    script = (
        f"p={OBSERVED_FILE}; u={user}; t0=$(date +%s); ts=$(date -d @$t0 +%T); "
        'runuser -u "$u" -- sudo -n chmod "$(stat -c %a "$p")" "$p"; '
        "for i in 1 2 3 4 5 6 7 8 9 10; do "
        'out=$(ausearch --input-logs -ts today "$ts" --raw 2>/dev/null); '
        'case "$out" in *\'comm="chmod"\'*) break;; esac; sleep 1; done; '
        'echo "t0=$t0"; printf "%s\\n" "$out"'
    )
    out = host.run(script).stdout
    found = re.search(r"^t0=(\d+)$", out, re.M)
    t0 = int(found.group(1)) if found else 0
    events: dict[str, list[str]] = {}
    # split("\n"), not splitlines(): that also splits at 0x1d, where ENRICHED appends the names
    for line in out.split("\n"):
        m = _AUDIT_ID.search(line)
        if m and int(m.group(1)) >= t0:
            events.setdefault(m.group(2), []).append(line)
    # keep the events of this action: those of a chmod process, and sudo's record of the command
    mine = {
        k: v
        for k, v in events.items()
        if any('comm="chmod"' in ln for ln in v) or any(_is_type(ln, "USER_CMD") for ln in v)
    }
    _OBSERVED[host.backend.get_hostname()] = mine
    return mine


_OBSERVED: dict[str, dict[str, list[str]]] = {}


def records(events: dict[str, list[str]], *, key: str | None = None, kind: str | None = None) -> list[str]:
    """The lines of the events with audit key ``key`` (or of type ``kind``), flattened."""
    out = []
    for lines in events.values():
        if key and any(f'key="{key}"' in ln for ln in lines):
            out += lines
        elif kind and any(_is_type(ln, kind) for ln in lines):
            out += [ln for ln in lines if _is_type(ln, kind)]
    return out


def _is_type(line: str, kind: str) -> bool:
    """Whether a raw record is of type ``kind`` (with ``name_format`` set, lines begin ``node=<host> ``)."""
    return re.match(rf"^(node=\S+ )?type={kind} ", line) is not None


def enriched(line: str) -> dict[str, str]:
    """The names ENRICHED appends after 0x1d (AUID="ckms-automation" UID="root" ...)."""
    _, _, tail = line.partition("\x1d")
    return dict(re.findall(r'(\w+)="([^"]*)"', tail))
