"""The terminal's daily tools on the lab's certificate-management terminal (A.38, A.42; issue 14).

``ckms`` must be installed on the terminal from the wheelhouse (the same version as the CA host's) and work
with the invoking person's own credential (``/etc/ckms-terminal/people/<login>/``): as ``operator-1``, a
small production run of three CSRs made on the terminal enrols with ``ckms terminal enrol-batch``, a rerun
issues nothing, the devices are found by device ID, a recall dry run names exactly them and changes
nothing, and the recall revokes exactly them in one batch. Each step's output is kept as evidence.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

testinfra_hosts = ["ansible://terminal"]

PERSON = "operator-1"
COUNT = 3


def as_person(host, script: str):
    return host.run(f"cd /tmp && runuser -u {PERSON} -- sh -c {shlex.quote(script)}")


@pytest.mark.check("check:A.38.terminal_tools_with_personal_credential")
def test_terminal_tools_with_personal_credential(host, evidence):
    where = host.run('command -v ckms && readlink -f "$(command -v ckms)"')
    evidence.add("ckms on the terminal", where.stdout.strip() or where.stderr.strip())
    assert where.rc == 0, "A.38: the ckms client (terminal tools) is not installed on the terminal"
    runs = host.run("ckms terminal --help")
    evidence.add("ckms terminal --help", runs.stdout[:800] or runs.stderr[-300:])
    assert runs.rc == 0, f"A.38: ckms terminal does not run on the terminal: {runs.stderr[-300:]}"

    tag = f"chk-a38-{int(time.time())}"
    devices = [f"{tag}-{i}" for i in range(COUNT)]
    script = terminal_script(devices)
    run = as_person(host, script)
    evidence.add(f"as {PERSON}: enrol-batch twice, find, recall --dry-run, recall", run.stdout[-3500:])
    assert run.rc == 0, f"A.38: the terminal tools failed as {PERSON}: {run.stderr[-500:]}"
    out = run.stdout
    assert f"{COUNT} requests: issued {COUNT}, skipped 0" in out, "A.38: the batch did not enrol"
    assert f"{COUNT} requests: issued 0, skipped {COUNT}" in out, "A.38: a rerun of the batch issued again"
    assert f"dry run: {COUNT} certificates would be revoked" in out
    assert f"revoked {COUNT} certificates (cessationOfOperation)" in out, "A.42: the recall did not revoke"
    found = [json.loads(block) for block in _json_blocks(out)]
    assert [f[0]["status"] for f in found] == ["valid", "valid", "revoked"], found
    assert found[0][0]["requested_by"] == PERSON, (
        "A.29: the certificate does not name the person who enrolled it"
    )


def terminal_script(devices: list[str]) -> str:
    """What the person runs: CSRs made with openssl, enrol-batch twice, find, recall dry run, recall."""
    make = " && ".join(
        f"openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null "
        f"-subj /CN={dev} -out $d/in/{dev}.csr 2>/dev/null"
        for dev in devices
    )
    list_file = "\\n".join(devices)
    script = (
        f"set -e; d=$(mktemp -d); mkdir $d/in; {make}; "
        f"ckms terminal enrol-batch $d/in --out $d/out; "
        f"ckms terminal enrol-batch $d/in --out $d/out; "
        f"ckms terminal find --device-id {devices[0]} --json; "
        f"printf '{list_file}\\n' > $d/list; "
        f"ckms terminal recall $d/list --reason cessationOfOperation --dry-run; "
        f"ckms terminal find --device-id {devices[0]} --json; "
        f"ckms terminal recall $d/list --reason cessationOfOperation --yes; "
        f"ckms terminal find --device-id {devices[0]} --json; rm -rf $d"
    )
    return script


def _json_blocks(text: str) -> list[str]:
    """The JSON arrays ``find --json`` printed, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        if line == "[":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "]":
                blocks.append("\n".join(current))
                current = None
    return blocks
