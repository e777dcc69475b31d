"""The wheel a CA host installs holds the CA daemon package and nothing of the lab (F.06 a).

Built by the project's own script (scripts/build-wheelhouse.sh, from the committed tree, as the ckms_ca
role installs it), then listed: only ckms_app and the distribution's metadata, no lab, Pulumi, bench,
multinode or throwaway-PostgreSQL code.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB_CODE = ("ckms_lab", "bench", "multinode", "throwaway_postgres", "provider", "langhost", "pulumi")


def test_the_ca_wheel_carries_only_the_daemon_package() -> None:
    out = subprocess.run(
        [str(REPO / "scripts/build-wheelhouse.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "CKMS_VENV": str(REPO / ".venv")},
        check=True,
    )
    wheelhouse = Path(out.stdout.strip().splitlines()[-1])
    (wheel,) = wheelhouse.glob("ckms-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"ckms_app", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert not [n for n in names if any(part in n for part in LAB_CODE)], "lab code in the CA wheel"
    # the layered packages are all there (an empty or partial package would also pass the lines above)
    for package in ("x509", "hsm", "store", "audit", "authority", "daemon", "cli"):
        assert f"ckms_app/{package}/__init__.py" in names
    assert "ckms_app/authority/signer.py" in names
