"""Hypothesis settings for the fuzz tests: short and reproducible in ``make test``, long under ``make fuzz``.

``make test`` runs each property a bounded number of times from a fixed seed (``derandomize``), so the
suite's time and outcome do not depend on luck or on how busy the machine is. ``make fuzz`` sets
``CKMS_FUZZ=1``: many more examples from random seeds, and failing examples kept in build/hypothesis so
the next run tries them first. Either way, any exception other than the parser's own refusal fails.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

FUZZ = os.environ.get("CKMS_FUZZ", "") not in ("", "0")

settings.register_profile(
    "ckms",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ckms-fuzz",
    derandomize=False,
    database=DirectoryBasedExampleDatabase("build/hypothesis"),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ckms-fuzz" if FUZZ else "ckms")


def examples(quick: int, fuzz_factor: int = 50) -> settings:
    """``quick`` examples in make test, ``quick * fuzz_factor`` under make fuzz."""
    return settings(max_examples=quick * fuzz_factor if FUZZ else quick)
