#!/usr/bin/env bash
# make lab-status: the stack's hosts, whether each is running, and its systemd state over SSH.
# (as the automation account: nobody logs in as root)
set -euo pipefail
source "$(dirname "$0")/lab-env.sh"
inv=$repo/inventories/$stack/generated
"$venv/bin/python" - "$lab" "$inv" <<'PY'
import json, subprocess, sys
from pathlib import Path
from ckms_lab import hosts, paths
lab, inv = sys.argv[1], Path(sys.argv[2])
rows = hosts.list_hosts(lab)
if not rows:
    print(f"lab '{lab}': no hosts (make lab-up)")
    sys.exit(0)
for h in rows:
    state = "-"
    if h["running"]:
        r = subprocess.run(["ssh", "-i", str(paths.ssh_key()), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                            "-o", f"UserKnownHostsFile={inv / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
                            f"ckms-automation@{h['mgmt_address']}", "systemctl is-system-running"],
                           capture_output=True, text=True)
        state = r.stdout.strip() or r.stderr.strip()
    print(f"{h['name']:10} {h['role']:9} {h['mgmt_address']:15} {'running' if h['running'] else 'stopped':8} {state}")
PY
