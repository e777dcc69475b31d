#!/usr/bin/env bash
# Lint the Ansible side: yamllint over the repository's YAML (.yamllint) and ansible-lint with the
# production profile (.ansible-lint) over the roles, the playbooks and the shared Molecule playbooks.
#
# Offline: ansible-lint never reaches Galaxy (offline: true in .ansible-lint, and --offline here); the
# collections the roles use come from the `ansible` pip bundle in the venv. Exit status non-zero on any
# finding of either tool (yamllint --strict: warnings count too).
# Env: CKMS_VENV (default .venv).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CKMS_VENV:-$repo/.venv}
log() { echo "lint-ansible: $*" >&2; }
for tool in yamllint ansible-lint; do
  [ -x "$venv/bin/$tool" ] || { log "no $tool in $venv (pip install the lint extra: .[lint])"; exit 1; }
done
cd "$repo"
# The venv first on PATH (ansible-lint runs ansible-playbook --syntax-check and ansible-config);
# no colour codes in CI logs; Ansible's own temporary files stay out of the repository.
export PATH="$venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg" NO_COLOR=1 PY_COLORS=0 \
       ANSIBLE_FORCE_COLOR=0 ANSIBLE_LOCAL_TEMP="${TMPDIR:-/tmp}/ckms-lint-ansible-tmp"
rc=0
log "yamllint"
yamllint --strict -f parsable . || rc=1
log "ansible-lint (production profile)"
ansible-lint --offline --profile production --nocolor -f pep8 roles ansible molecule/shared || rc=1
[ "$rc" -eq 0 ] && log "clean" || log "findings above"
exit "$rc"
