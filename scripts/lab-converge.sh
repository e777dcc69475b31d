#!/usr/bin/env bash
# Run the Ansible playbooks against the lab (inventories/<stack>/generated, written by make lab-up).
#
#   scripts/lab-converge.sh [PLAYBOOK [ansible-playbook args…]]   default PLAYBOOK: site.yml
#   scripts/lab-converge.sh --all       make lab after lab-up: site.yml, verify.yml, backup.yml, restore.yml
#                                       (the first backup restored and proven: F.49, F.57), drills, report
#
# Lab secrets are per machine and never committed: the Ansible Vault password is generated into the tool
# cache ($CKMS_TOOL_CACHE/ansible/vault-pass); the vault file with the token's user PIN and the GRUB superuser's
# password hash, and the backup recipient key pair are generated once per stack (the vault into the generated
# inventory's group_vars, the GRUB password and the recipient key into the tool cache, where the custodians of a
# real CA would keep them offline).
# Env: CKMS_LAB_STACK (default lab), CKMS_TOOL_CACHE, CKMS_SKIP_TAGS (ansible --skip-tags, e.g. harden,perimeter
# while those roles are being developed), CKMS_REPORT_STRICT=1 (make lab fails when a check fails),
# CKMS_LAB_DRILLS=0 (--all without the drills of docs/drills.md; their checks are then "not run" in the report),
# CKMS_CONVERGE_START_AT (--all: site.yml from this task name on, e.g. to resume a VM CA host's long converge).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
cache=${CKMS_TOOL_CACHE:-$HOME/.cache/ckms}
stack=${CKMS_LAB_STACK:-lab}
gen=$repo/inventories/$stack/generated
inv=$gen/hosts.yml
log() { echo "lab-converge: $*" >&2; }
export PATH="$venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg" CKMS_TOOL_CACHE="$cache"
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0}
[ -f "$inv" ] || { log "no inventory at $inv: run make lab-up first"; exit 1; }

secrets() {
  local adir=$cache/ansible keydir=$cache/ansible/$stack
  mkdir -p "$keydir"; chmod 700 "$adir" "$keydir"
  export ANSIBLE_VAULT_PASSWORD_FILE=$adir/vault-pass
  if [ ! -s "$ANSIBLE_VAULT_PASSWORD_FILE" ]; then
    (umask 077; "$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$ANSIBLE_VAULT_PASSWORD_FILE")
  fi
  if [ ! -s "$keydir/backup-recipient.pem" ]; then
    (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 3650 \
       -subj "/CN=ckms backup recipient ($stack lab)" -keyout "$keydir/backup-recipient.key" \
       -out "$keydir/backup-recipient.pem" 2>/dev/null)
  fi
  mkdir -p "$gen/group_vars/ca" "$gen/group_vars/all"
  # The vault holds the token's user PIN and, below, the GRUB password's hash. The SO PIN is drawn on the CA host at
  # token initialisation and split among the three custodians at the key ceremony (E.22); their shares and
  # passphrases land in $keydir/custodians/<name>/ (0700, files 0600). A vault of an earlier lab that still has an SO
  # PIN loses it.
  local vault=$gen/group_vars/ca/vault.yml
  if [ -s "$vault" ] && ansible-vault view "$vault" | grep -q '^vault_hsm_client_so_pin:'; then
    (umask 077; ansible-vault view "$vault" | grep -v '^vault_hsm_client_so_pin:' >"$vault.plain")
    ansible-vault encrypt --output "$vault" "$vault.plain" >/dev/null
    rm -f "$vault.plain"
  fi
  if [ ! -s "$vault" ]; then
    (umask 077; "$venv/bin/python" - >"$vault.plain" <<'PY'
import secrets
print("---\n# Token user PIN of the lab CA (hsm_client). Generated per lab; encrypted with the per-machine vault password.")
print(f"vault_hsm_client_user_pin: {secrets.token_urlsafe(24)}")
PY
    )
    ansible-vault encrypt --output "$vault" "$vault.plain" >/dev/null
    rm -f "$vault.plain"
  fi
  # The GRUB superuser's password (os_hardening's bootloader concern, F.07): random per lab, kept only in
  # $keydir/bootloader-password (0600); the vault holds its hash as grub-mkpasswd-pbkdf2 prints it
  # (scripts/grub-pbkdf2.py; os_hardening reads vault_os_hardening_bootloader_password_hash). A vault of an earlier
  # lab without the hash gets it; a password file that is gone is made anew and its hash replaces the old one.
  local bootpw=$keydir/bootloader-password boothash
  if [ ! -s "$bootpw" ] || ! ansible-vault view "$vault" | grep -q '^vault_os_hardening_bootloader_password_hash:'; then
    boothash=$("$venv/bin/python" "$repo/scripts/grub-pbkdf2.py" --new-password "$bootpw")
    (umask 077
     ansible-vault view "$vault" | grep -v '^vault_os_hardening_bootloader_password_hash:' >"$vault.plain"
     printf 'vault_os_hardening_bootloader_password_hash: %s\n' "$boothash" >>"$vault.plain")
    ansible-vault encrypt --output "$vault" "$vault.plain" >/dev/null
    rm -f "$vault.plain"
  fi
  mkdir -p "$keydir/custodians" "$gen/group_vars/router"; chmod 700 "$keydir/custodians"
  # The lab's time source is its router: a chrony server on its own clock (no upstream in the lab).
  cat >"$gen/group_vars/router/lab.yml" <<YML
---
# Written by scripts/lab-converge.sh: the lab router serves time from its local clock (a production
# time server has upstream ntp_servers instead).
ntp_mode: server
ntp_servers: []
YML
  # One registered emergency-administration VPN peer (F.17): its WireGuard key pair stays in the controller's
  # cache (0600), only the public key is configuration; its /32 is .10 of the model's VPN segment.
  if [ ! -s "$keydir/vpn-admin-1.key" ]; then
    (umask 077; "$venv/bin/python" -c 'import base64; from cryptography.hazmat.primitives.asymmetric import x25519; from cryptography.hazmat.primitives import serialization as s; print(base64.b64encode(x25519.X25519PrivateKey.generate().private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())).decode())' >"$keydir/vpn-admin-1.key")
  fi
  "$venv/bin/python" - "$keydir/vpn-admin-1.key" "$inv" >>"$gen/group_vars/router/lab.yml" <<'PY'
import base64, ipaddress, sys, yaml
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives import serialization as s
key = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(open(sys.argv[1]).read().strip()))
pub = base64.b64encode(key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)).decode()
hosts = yaml.safe_load(open(sys.argv[2]))["all"]["hosts"]
vpn = ipaddress.ip_address(hosts["router"]["ckms_addresses"]["vpn"])
print("router_vpn_peers:")
print(f"  - {{name: admin-vpn-1, public_key: '{pub}', address: {ipaddress.ip_address(int(vpn) + 9)}/32}}")
PY
  # The CA's clock gate (A.33) needs chrony synchronised, which the ntp role (perimeter plays) provides.
  local clock=chrony
  case ",${CKMS_SKIP_TAGS:-}," in *,perimeter,*) clock=none ;; esac
  cat >"$gen/group_vars/all/lab.yml" <<YML
---
# Written by scripts/lab-converge.sh (lab only; production inventories set these themselves).
backup_recipient_cert_src: $keydir/backup-recipient.pem
backup_recipient_key_src: $keydir/backup-recipient.key
backup_fetch_dir: $repo/build/backups/$stack/{{ inventory_hostname }}
# Environment values no role defaults: the lab's simulations, named here (production: docs/production.md)
ckms_hsm_module: /usr/lib/softhsm/libsofthsm2.so
# declared in the system inventory (A.32, F.32): what no host can report about itself
ckms_hsm_cmvp_certificate: "none: SoftHSM2 stands in for the HSM and holds no validation"
ups_driver: dummy-ups
# no package mirror reaches the lab hosts: automatic updates off, patches by the reviewed procedure (F.44)
os_hardening_updates_timers_enabled: false
ups_poweroff: false
# the VM CA host (LAB_CA=vm) reboots into the hardened kernel command line in the hardening play, so the
# report observes it running; containers have no bootloader (not applicable); production: a maintenance window
os_hardening_bootloader_reboot: true
antimalware_clamav_test_signature: true
ckms_ca_wheelhouse_src: ${CKMS_WHEELHOUSE:-$repo/build/wheelhouse}
ckms_ca_people_dir: $keydir/people
ckms_ca_people:
  - {id: admin-1, role: administrator, enrol_on: controller}
  - {id: authority-1, role: authority, enrol_on: controller}
  - {id: auditor-1, role: auditor, enrol_on: controller}
  - {id: operator-1, role: operator, enrol_on: terminal}
  - {id: operator-2, role: operator, enrol_on: terminal}
# two cores shared by the whole lab: one worker process
ckms_ca_workers: 1
# chrony from the router's lab time source (ntp role); none only when the perimeter plays are skipped
ckms_ca_clock_source: $clock
# HSM custodians (E.22, E.23): each gets <name>.share and passphrase in their own controller directory
ckms_ca_custodians:
  - {name: custodian-1, dest: $keydir/custodians/custodian-1}
  - {name: custodian-2, dest: $keydir/custodians/custodian-2}
  - {name: custodian-3, dest: $keydir/custodians/custodian-3}
# The lab's UPS is simulated (dummy-ups): its state file is device state the power drill changes, not
# configuration, so the integrity baseline leaves it out (a real UPS has no such file).
integrity_aide_excludes_extra: ["/etc/nut/{{ ups_name | default('ckmsups') }}.dev"]
YML
}

skip=()
[ -n "${CKMS_SKIP_TAGS:-}" ] && skip=(--skip-tags "$CKMS_SKIP_TAGS")
play() {
  local pb=$1; shift
  log "ansible-playbook $pb ${skip[*]} $*"
  ansible-playbook -i "$inv" "${skip[@]}" "$repo/ansible/$pb" "$@"
}

secrets
# The CA hosts install the daemon offline from this wheelhouse (ckms_ca_wheelhouse_src; cached).
"$repo/scripts/build-wheelhouse.sh" >/dev/null
if [ "${1:-}" != "--all" ]; then
  play "${1:-site.yml}" "${@:2}"
  exit 0
fi

t0=$(date +%s)
start_at=()
[ -n "${CKMS_CONVERGE_START_AT:-}" ] && start_at=(--start-at-task "$CKMS_CONVERGE_START_AT")
play site.yml "${start_at[@]}";   t1=$(date +%s)
play verify.yml; t2=$(date +%s)
play backup.yml
# Restore drill (F.49, F.57): the backup just taken is restored onto the CA host, the daemon passes its
# start-up self-tests on the restored home before it serves, and it is the same CA.
play restore.yml; t3=$(date +%s)
# The drills (docs/drills.md) prove the perimeter, detection, time, power and HSM controls on the running lab;
# their records (this run's only) join the report. They leave the lab as they found it.
out=${REPORT_OUT:-$repo/build/report}
# One run ID for every file of this report (issue 18): checks, drills, inventory and the signature carry it;
# the report marks inputs of other runs.
mkdir -p "$out"
eval "$("$venv/bin/python" -m hardening.provenance start --out "$out" --inventory "$inv" --command "scripts/lab-converge.sh $*")"
export CKMS_RUN_ID
drills=skipped
if [ "${CKMS_LAB_DRILLS:-1}" != 0 ]; then
  mkdir -p "$out"; rm -f "$out/drills.json"
  export CKMS_DRILL_RECONVERGE=${CKMS_DRILL_RECONVERGE:-"$repo/scripts/lab-converge.sh site.yml --limit router --tags router_firewall"}
  drills=ok
  "$repo/tests/lab/drills/run_all.sh" --inventory "$inv" --results "$out/drills.json" >"$out/drills.log" 2>&1 \
    || drills="failed (see $out/drills.log)"
  log "drills: $drills"
else
  rm -f "$out/drills.json"
fi
t4=$(date +%s)
# Attested procedures on the CA's trail (issue 18) join the report; the lab attests its security policy.
play attestations.yml -e attestations_out="$out/attestations.json" \
  -e '{"attestations_record": [{"item": "A.01", "evidence": "'"$repo"'/docs/security-policy.md", "note": "lab: policy document generated from the catalog", "person": "authority-1"}]}' \
  || log "attestations could not be collected"
rc=0; CKMS_DRILL_RESULTS="$out/drills.json" "$repo/scripts/report.sh" || rc=$?
# The bundle is signed last (anything written after the signature fails ckms report verify as an extra file).
play report_sign.yml -e report_sign_bundle="$out" || { log "report signing failed"; rc=1; }
t5=$(date +%s)
failed=$("$venv/bin/python" -c 'import json,sys; print(sum(r["outcome"] == "failed" for r in json.load(open(sys.argv[1]))))' \
  "${REPORT_OUT:-$repo/build/report}/results.json" 2>/dev/null || echo "?")
key=$cache/lab/ssh/id_ed25519
term=$("$venv/bin/python" -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["all"]["hosts"]["terminal"]["ansible_host"])' "$inv")
kh=$gen/known_hosts
cat <<TXT

== ckms lab is up (converge $((t1 - t0)) s, verify $((t2 - t1)) s, backup + restore drill $((t3 - t2)) s, drills $((t4 - t3)) s: $drills, report $((t5 - t4)) s) ==
Report:  ${REPORT_OUT:-$repo/build/report}/report.html  ($failed failing checks)   (also summary.md, report.json, junit.xml; LANG_REPORT=ja|en)
Issue a first certificate from the terminal as operator operator-1, with their own key (EST over mutual TLS
1.3, through the router); the CA's trail names operator-1:
  ssh -i $key -o UserKnownHostsFile=$kh ckms-automation@$term sudo -n runuser -u operator-1 -- ckms-enroll device-0001 /tmp/certs
  (through the automation account, as Ansible does: root login is closed; operator-2 has a key of their own)
Again without the script: see /usr/local/bin/ckms-enroll on the terminal (openssl + curl).
Persons: admin-1, authority-1, auditor-1 keep key, certificate and password on this machine in
  $cache/ansible/$stack/people/<id>/; operator-1, operator-2 in /etc/ckms-terminal/people/<id>/ on the terminal.
Restore drill again:  make converge PLAYBOOK=restore.yml
Tear down:      make lab-down
TXT
# The report is the result: failing checks are in it (and fail `make report`); make lab itself fails on
# them only with CKMS_REPORT_STRICT=1.
[ "${CKMS_REPORT_STRICT:-0}" = 1 ] && exit $rc
exit 0
