"""Checks of personal identities and role separation on the deployed CA (A.27-A.30, E.02-E.05).

Every check acts as a real person of the lab with that person's own credential (``ckms_people``): the
controller persons' passwords reach the CA host on stdin, their keys stay on the controller (TLS runs
through an SSH port forward), the operators act on the terminal as their own Linux accounts. Each check
tries the forbidden thing and asserts that it is refused and recorded; what it changes on the live CA
(an ACL entry, a scratch entity) it changes through the same two-person flow and puts back.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time

import pytest
import testinfra
from ckms_checks import CA_HOME, CA_USER, REPO, ca_tables, policy
from ckms_checks import host_now as _now
from ckms_checks import short_records as _short
from ckms_checks import trail_since as _trail
from ckms_people import (
    CKMS,
    TERMINAL_PEOPLE,
    ckms_as,
    csr_b64,
    decided,
    people_dir,
    person_file,
    propose_and_approve,
    run_with_stdin,
    tls_post,
    withdraw,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from testinfra.utils.ansible_runner import AnsibleRunner

if str(REPO) not in sys.path:  # the documented default ACL is the repository's own (E.03)
    sys.path.insert(0, str(REPO))
from ckms_app.authority.rbac import DEFAULT_ACL  # noqa: E402

testinfra_hosts = ["ansible://ca"]

ADMIN, AUTHORITY, AUDITOR = "admin-1", "authority-1", "auditor-1"
OPERATORS = ("operator-1", "operator-2")
ROLES = {"authority", "administrator", "operator", "auditor"}


def _detail(rec: dict) -> dict:
    try:
        return json.loads(rec.get("detail") or "{}")
    except ValueError:
        return {}


def _entities(host) -> dict[str, dict]:
    got = ckms_as(host, ADMIN, "entity list")
    assert got.rc == 0, f"{ADMIN} cannot list the entities: {got.stderr.strip()[-300:]}"
    return {e["entity_id"]: e for e in got.json() or []}


def _acl(host) -> set[tuple[str, str, str]]:
    got = ckms_as(host, ADMIN, "acl list")
    assert got.rc == 0, f"{ADMIN} cannot read the ACL: {got.stderr.strip()[-300:]}"
    return {(r["role"], r["operation"], r["resource"]) for r in got.json() or []}


def _public_host(host) -> str:
    m = re.search(r'^public_host\s*=\s*"([^"]+)"', host.file(f"{CA_HOME}/ckms.toml").content_string, re.M)
    return m.group(1) if m else "127.0.0.1"


def _terminal(request):
    inv = request.config.getoption("ansible_inventory")
    hosts = AnsibleRunner(inv).get_hosts("terminal")
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inv) if hosts else None


def _as_operator(term, operator: str, script: str):
    """``script`` (sh) on the terminal as the operator's own Linux account."""
    return term.run(f"cd /tmp && runuser -u {operator} -- sh -c {shlex.quote(script)}")


def _operator_admin_call(term, operator: str, path: str) -> str:
    """HTTP status of an admin API call made with the operator's own client certificate."""
    cred = f"{TERMINAL_PEOPLE}/{operator}"
    out = _as_operator(
        term,
        operator,
        ". /etc/ckms-terminal/est.conf; base=${EST_URL%/.well-known/est}; "
        "curl -s -o /dev/null -w '%{http_code}' --tlsv1.3 --max-time 20 --cacert /etc/ckms-terminal/ca.pem "
        f"--cert {cred}/cert.pem --key {cred}/key.pem -X POST -H 'Content-Type: application/json' -d '{{}}' "
        f'"$base{path}"',
    )
    return out.stdout.strip()


def _refused(result) -> bool:
    """A CLI refusal: non-zero exit and no change created."""
    return result.rc != 0 and decided(result).get("change") is None


# ------------------------------------------------------------------------------------------- A.27
@pytest.mark.check("check:A.27.four_roles_defined")
def test_four_roles_defined(host, evidence):
    acl_roles = {role for role, _op, _res in _acl(host)}
    people = policy(host, "ckms_ca_people") or []
    entities = _entities(host)
    held = {p["id"]: (entities.get(p["id"]) or {}).get("roles") for p in people}
    scratch = f"check-a27-{int(time.time())}"
    bogus = ckms_as(host, ADMIN, f"entity add {scratch} --role superuser")
    withdraw(host, AUTHORITY, bogus)
    evidence.add("roles in the database ACL", sorted(acl_roles))
    evidence.add("roles held by the inventory's persons", held)
    evidence.add("proposal of an undefined role 'superuser'", f"rc={bogus.rc} {bogus.stderr.strip()[-200:]}")
    assert acl_roles == ROLES, f"A.27: the ACL defines roles {sorted(acl_roles)}, not the four of A.27"
    assert {p["role"] for p in people} == ROLES, "A.27: the deployment assigns nobody to some role"
    wrong = {p["id"]: held[p["id"]] for p in people if held[p["id"]] != [p["role"]]}
    assert not wrong, f"A.27: persons not holding exactly their assigned role: {wrong}"
    assert _refused(bogus), "A.27: a role outside the four was accepted in a proposal"


# ------------------------------------------------------------------------------------------- A.28
@pytest.mark.check("check:A.28.permission_matrix_enforced")
def test_permission_matrix_enforced(host, request, evidence):
    since = _now(host)
    term = _terminal(request)
    status, body = tls_post(
        host,
        AUDITOR,
        _public_host(host),
        "/.well-known/est/simpleenroll",
        csr_b64(f"check-a28-{int(time.time())}"),
        "application/pkcs10",
        via=term,
    )
    evidence.add(
        "auditor-1 requests issuance over EST with their own certificate", f"HTTP {status} {body[:200]}"
    )
    op_status = _operator_admin_call(term, OPERATORS[0], "/api/v1/admin/selftest") if term else None
    evidence.add(
        "operator-1 calls the admin API (self-test) with their own certificate", op_status or "no terminal"
    )
    time.sleep(1.0)
    recs = [r for r in _trail(host, since) if r["outcome"] == "denied"]
    evidence.add("refusals recorded", _short(recs))
    assert status in (401, 403), f"A.28: the auditor's issuance request was answered {status}"
    assert any(r["entity_id"] == AUDITOR and r["action"].startswith("certificate.") for r in recs), (
        "A.28: the auditor's refused issuance is not in the trail under their name"
    )
    if term is None:
        evidence.limit("no terminal in this inventory: the operator's refused admin call was not tried")
        return
    assert op_status in ("401", "403"), f"A.28: the operator's admin call was answered {op_status}"
    assert any(r["entity_id"] == OPERATORS[0] for r in recs), (
        "A.28: the operator's refusal is not in the trail"
    )


# ------------------------------------------------------------------------------------------- A.29
@pytest.mark.check("check:A.29.conflicting_role_assignment_rejected")
def test_conflicting_role_assignment_rejected(host, evidence):
    since = _now(host)
    proposed, approved = propose_and_approve(host, ADMIN, AUTHORITY, f"entity grant {AUTHORITY} operator")
    if approved is None or approved.rc != 0:
        withdraw(host, AUTHORITY, proposed)
    roles = (_entities(host).get(AUTHORITY) or {}).get("roles")
    recs = [r for r in _trail(host, since) if r["outcome"] == "denied"]
    evidence.add(
        "admin-1 proposes: authority-1 also operator", f"rc={proposed.rc} {proposed.stderr.strip()[-300:]}"
    )
    if approved is not None:
        evidence.add("authority-1 approves", f"rc={approved.rc} {approved.stderr.strip()[-300:]}")
    evidence.add("refusals recorded", _short(recs))
    evidence.add("authority-1's roles afterwards", roles)
    assert approved is None or approved.rc != 0, "A.29: authority-1 was granted operator as well"
    assert roles == ["authority"], f"A.29: authority-1 now holds {roles}"
    assert recs, "A.29: the refused conflicting assignment is not in the trail"


@pytest.mark.check("check:A.29.no_person_private_key_on_ca_host")
def test_no_person_private_key_on_ca_host(host, request, evidence):
    cfg = host.file(f"{CA_HOME}/ckms.toml").content_string
    m = re.search(r'^tls_key\s*=\s*"([^"]+)"', cfg, re.M)
    tls_key = (m.group(1) if m.group(1).startswith("/") else f"{CA_HOME}/{m.group(1)}") if m else None
    # PEM private keys (any kind) by their armour; DER (PKCS#8 or SEC1) among files named like keys.
    # Each one's public key (SHA-256 of its DER SubjectPublicKeyInfo) is compared with every person's.
    scan = host.run(
        "{ grep -rlsI -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' /etc /root /home /var /opt /srv /tmp /usr/local "
        "| sed 's/^/pem /'; find /etc /root /home /var/lib /opt /srv /tmp /usr/local -type f "
        r"\( -name '*.key' -o -name '*.der' -o -name '*.p8' -o -name '*.pk8' \) 2>/dev/null | sed 's/^/der /'; } "
        "| while read -r kind f; do "
        'h=$( { openssl pkey -passin pass: -in "$f" -pubout -outform DER 2>/dev/null '
        '|| openssl pkey -passin pass: -inform DER -in "$f" -pubout -outform DER 2>/dev/null; } | sha256sum); '
        'h=${h%% *}; [ "$h" = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ] && h=-; '
        '[ "$kind" = der ] && [ "$h" = - ] && continue; echo "$f $h"; done | sort -u'
    )
    found: dict[str, str] = {
        path: h
        for path, h in (line.rsplit(" ", 1) for line in scan.stdout.splitlines() if " " in line)
        # library sources that merely spell the PEM armour (cryptography's ssh.py) are no keys
        if not (h == "-" and re.search(r"/(site|dist)-packages/|\.py$", path))
    }
    people: dict[str, str] = {}
    for p in policy(host, "ckms_ca_people") or []:
        pem = person_file(p["id"], "cert.pem")
        if pem.exists():
            people[_spki_sha256(pem.read_bytes())] = p["id"]
    term = _terminal(request)
    if term is not None:
        for op in OPERATORS:
            out = term.run(f"cat {TERMINAL_PEOPLE}/{op}/cert.pem")
            if out.rc == 0 and out.stdout.strip():
                people[_spki_sha256(out.stdout.encode())] = op
    in_home = sorted(p for p in found if p.startswith(CA_HOME + "/") and p != tls_key)
    persons = {p: people[h] for p, h in found.items() if h in people}
    evidence.add("private keys found on the CA host", sorted(found))
    evidence.add("the daemon's TLS key (allowed)", tls_key)
    evidence.add("persons' public keys compared", sorted(people.values()))
    evidence.add("keys in the CA home besides the TLS key", in_home or "none")
    evidence.add("keys that belong to a person", persons or "none")
    assert len(people) >= 3, (
        f"A.29: too few persons' certificates to compare with ({sorted(people.values())})"
    )
    assert not persons, f"A.29: a person's private key is on the CA host: {persons}"
    assert not in_home, f"A.29: private keys in the CA home besides the daemon's TLS key: {in_home}"


def _spki_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# ------------------------------------------------------------------------------------------- E.02
@pytest.mark.check("check:E.02.key_functions_refuse_unauthorised_entity")
def test_key_functions_refuse_unauthorised_entity(host, request, evidence):
    since = _now(host)
    seal = ckms_as(host, AUDITOR, "audit seal")
    term = _terminal(request)
    recover = _operator_admin_call(term, OPERATORS[0], "/api/v1/admin/recover") if term else None
    sudo = {
        who: (
            host.run(f"sudo -n -l -U {who} -u {CA_USER} {CKMS} hsm status").rc
            if host.user(who).exists
            else None
        )
        for who in (AUDITOR, ADMIN)
    }
    time.sleep(1.0)
    recs = [r for r in _trail(host, since) if r["outcome"] == "denied"]
    evidence.add("auditor-1: ckms audit seal (HSM audit key)", f"rc={seal.rc} {seal.stderr.strip()[-300:]}")
    evidence.add("operator-1: admin recover over the API", recover or "no terminal")
    evidence.add("sudo -l: ckms hsm as the CA user (rc per account; 0 = allowed)", sudo)
    evidence.add("refusals recorded", _short(recs))
    assert seal.rc != 0, "E.02: the auditor used the HSM audit key"
    assert any(r["entity_id"] == AUDITOR for r in recs), "E.02: the auditor's refusal is not in the trail"
    if recover is not None:
        assert recover in ("401", "403"), f"E.02: the operator's admin call was answered {recover}"
        assert any(r["entity_id"] == OPERATORS[0] for r in recs), (
            "E.02: the operator's refusal is not audited"
        )
    if sudo[AUDITOR] is None:
        evidence.limit("no Linux accounts of the persons on this host (os_hardening not applied)")
    else:
        assert sudo[AUDITOR] != 0, "E.02: sudo lets the auditor run ckms hsm as the CA user"
        assert sudo[ADMIN] == 0, "E.02: sudo does not let the administrator run ckms hsm (the rule is broken)"


# ------------------------------------------------------------------------------------------- E.03
def _policy_acl(host) -> frozenset[tuple[str, str, str]]:
    """The documented default ACL, its grants on the CA key held by every key generation the CA has (after a
    rollover the new key is administered as the first one was, and a destroyed key's grants go with it)."""
    ca = ca_tables(host)
    labels = {ca.get("key_label", "ckms-ca-key")}
    labels |= {g["key_label"] for g in [ca.get("next") or {}, *ca.get("retired", [])] if g}
    first = "key:ckms-ca-key"
    return frozenset(g for g in DEFAULT_ACL if g[2] != first) | {
        (role, op, f"key:{label}") for role, op, res in DEFAULT_ACL if res == first for label in labels
    }


@pytest.mark.check("check:E.03.permission_matrix_matches_policy")
def test_permission_matrix_matches_policy(host, evidence):
    acl, expected = _acl(host), _policy_acl(host)
    evidence.add("database ACL", sorted(acl))
    evidence.add("in the database, not in the documented default", sorted(acl - expected) or "none")
    evidence.add("in the documented default, not in the database", sorted(expected - acl) or "none")
    assert acl == expected, (
        f"E.03: the enforced ACL differs from the policy: extra {sorted(acl - expected)}, "
        f"missing {sorted(expected - acl)}"
    )


# ------------------------------------------------------------------------------------------- E.04
@pytest.mark.check("check:E.04.each_operator_individually_authenticated")
def test_each_operator_individually_authenticated(host, request, evidence):
    term = _terminal(request)
    if term is None:
        pytest.skip("E.04: no terminal host in this inventory")
    since = _now(host)
    stamp = int(time.time())
    enrolled, keys = {}, {}
    for op in OPERATORS:
        out = _as_operator(
            term, op, f"d=$(mktemp -d) && ckms-enroll check-e04-{op}-{stamp} $d; rc=$?; rm -rf $d; exit $rc"
        )
        enrolled[op] = (out.rc, (out.stdout + out.stderr).strip()[-200:])
        keys[op] = term.run(
            f"openssl x509 -in {TERMINAL_PEOPLE}/{op}/cert.pem -noout -pubkey | sha256sum"
        ).stdout.split()[:1]
    as_root = term.run(f"ckms-enroll check-e04-root-{stamp} /tmp")
    borrowed = _as_operator(
        term, OPERATORS[0], f"ckms-enroll --as {OPERATORS[1]} check-e04-borrow-{stamp} /tmp"
    )
    peek = _as_operator(term, OPERATORS[0], f"cat {TERMINAL_PEOPLE}/{OPERATORS[1]}/key.pem")
    time.sleep(1.0)
    issued = [
        r for r in _trail(host, since) if r["action"] == "certificate.issue" and r["outcome"] == "success"
    ]
    evidence.add("each operator enrols a device with their own credential", enrolled)
    evidence.add("public keys of the operators' credentials (sha256)", keys)
    evidence.add("root without naming an operator", f"rc={as_root.rc} {as_root.stderr.strip()[-200:]}")
    evidence.add("operator-1 tries operator-2's credential", f"rc={borrowed.rc} / read key rc={peek.rc}")
    evidence.add("issuance records", _short(issued))
    assert all(rc == 0 for rc, _ in enrolled.values()), f"E.04: an operator could not enrol: {enrolled}"
    assert len({tuple(k) for k in keys.values()}) == len(OPERATORS), "E.04: operators share a key"
    assert as_root.rc != 0 and borrowed.rc != 0 and peek.rc != 0, (
        "E.04: an enrolment went unattributed or borrowed"
    )
    named = {r["entity_id"] for r in issued}
    assert set(OPERATORS) <= named, f"E.04: the trail does not name each operator: {sorted(named)}"


@pytest.mark.check("check:E.04.acs_change_requires_admin")
def test_acs_change_requires_admin(host, evidence):
    entry = ("auditor", "certificate.read", "profile:check-e04")
    args = f"acl grant {entry[0]} {entry[1]} --resource {entry[2]}"
    before = _acl(host)
    since = _now(host)
    by_auditor = ckms_as(host, AUDITOR, args)
    withdraw(host, AUTHORITY, by_auditor)
    self_grant = ckms_as(host, ADMIN, f"acl grant administrator {entry[1]} --resource {entry[2]}")
    withdraw(host, AUTHORITY, self_grant)
    proposed = ckms_as(host, ADMIN, args)
    pending = _acl(host)
    own = ckms_as(host, ADMIN, f"change approve {int(decided(proposed).get('change', 0))} --json")
    approved = ckms_as(host, AUTHORITY, f"change approve {int(decided(proposed).get('change', 0))} --json")
    after = _acl(host)
    # put the live ACL back the same way
    undo, undone = propose_and_approve(
        host, ADMIN, AUTHORITY, f"acl revoke {entry[0]} {entry[1]} --resource {entry[2]}"
    )
    if entry not in before:
        if undone is None or undone.rc != 0:
            withdraw(host, AUTHORITY, undo)
    restored = _acl(host)
    recs = _trail(host, since)
    applied = [r for r in recs if r["action"] == "acl.grant" and r["outcome"] == "success"]
    who = _detail(applied[-1]) if applied else {}
    evidence.add("auditor-1 proposes an ACL change", f"rc={by_auditor.rc} {by_auditor.stderr.strip()[-200:]}")
    evidence.add(
        "admin-1 grants their own role a permission", f"rc={self_grant.rc} {self_grant.stderr.strip()[-200:]}"
    )
    evidence.add("admin-1 proposes", proposed.stdout.strip()[-300:] or proposed.stderr.strip()[-300:])
    evidence.add("ACL changed before approval", entry in pending)
    evidence.add("admin-1 approves their own proposal", f"rc={own.rc} {own.stderr.strip()[-200:]}")
    evidence.add("authority-1 approves", approved.stdout.strip()[-400:] or approved.stderr.strip()[-300:])
    evidence.add("applied record: proposer, approver, methods", who)
    evidence.add("ACL restored afterwards", restored == before)
    assert _refused(by_auditor), "E.04: an auditor could propose an ACL change"
    assert _refused(self_grant), "E.04: an administrator could propose a permission for their own role"
    assert decided(proposed).get("status") == "proposed", (
        f"E.04: admin-1's proposal failed: {proposed.stderr[-300:]}"
    )
    assert entry not in pending, "E.04: the ACL changed before a second person approved"
    assert own.rc != 0, "E.04: the proposer approved their own ACL change"
    assert approved.rc == 0 and entry in after, "E.04: the approved ACL change is not in effect"
    assert who.get("proposer") == ADMIN and who.get("approver") == AUTHORITY, (
        f"E.04: audit lacks the two people: {who}"
    )
    assert who.get("proposer_method") and who.get("approver_method"), (
        "E.04: audit lacks how each authenticated"
    )
    assert restored == before, "E.04: the check could not put the ACL back"


# ------------------------------------------------------------------------------------------- E.05
@pytest.mark.check("check:E.05.token_pin_cannot_act_as_person")
def test_token_pin_cannot_act_as_person(host, evidence):
    pin = f"{CA_HOME}/secrets/token-pin"
    since = _now(host)
    env = f"cd / && runuser -u {CA_USER} -- env CKMS_HOME={CA_HOME} {CKMS}"
    listed = host.run(f"{env} entity list --home {CA_HOME} --as {ADMIN} --token-pin-file {pin}")
    # the "new" password is admin-1's own: even a wrong acceptance would leave the live CA as it was
    own = (people_dir() / ADMIN / "password").read_text().strip()
    passwd = run_with_stdin(
        host,
        f"{env} entity passwd {ADMIN} --home {CA_HOME} --as {ADMIN} --token-pin-file {pin} --new-password-file -",
        own + "\n",
    )
    time.sleep(0.5)
    recs = [r for r in _trail(host, since) if r["entity_id"] == ADMIN and r["outcome"] == "denied"]
    evidence.add(
        "entity list --as admin-1 --token-pin-file", f"rc={listed.rc} {listed.stderr.strip()[-200:]}"
    )
    evidence.add("entity passwd admin-1 with the token PIN", f"rc={passwd.rc} {passwd.stderr.strip()[-200:]}")
    evidence.add("refusals recorded under admin-1", _short(recs))
    assert listed.rc != 0, "E.05: the token PIN acted as admin-1 (entity list)"
    assert passwd.rc != 0, "E.05: the token PIN reset the password of a person who has one"
    assert recs, "E.05: the refused token-PIN use is not in the trail under admin-1"
