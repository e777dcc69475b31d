"""``make bench`` reports CPU per certificate by stage from a real daemon (issue 15), and the load's
open-loop phases; a short run so the report cannot rot unnoticed."""

from __future__ import annotations

import json

import pytest

from ckms_lab import bench
from ckms_lab.bench_stages import ORDER, per_certificate


def test_short_bench_counts_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--duration", "1", "--rates", "50", "--clients", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    closed = result["closed_loop"]
    assert closed["requests"] > 0 and closed["errors"] == 0
    assert closed["client_cpu_us_per_request"] > 0
    stages = result["cpu_stages"]
    assert stages["certificates"] == closed["requests"]  # the workers counted what the clients got
    for stage in ORDER[:-1]:  # every marked stage and the threads and helper read whole
        assert stages["us_per_certificate"][stage] > 0, stage
    assert stages["total_us"] == pytest.approx(sum(stages["us_per_certificate"].values()), abs=1)
    (steady,) = result["open_loop"]
    assert steady["rate_per_s"] == 50 and steady["errors"] == 0 and steady["requests"] > 0


def test_per_certificate_divides_the_differences() -> None:
    def snap(issued: int, loop: int, csr: int, commit: int, helper: int, process: int) -> dict[str, object]:
        return {
            "issued": issued,
            "loop_thread_ns": loop,
            "stages_ns": {"csr": csr},
            "threads_ns": {"commit_audit": commit},
            "lint_helper_ns": helper,
            "process_ns": process,
        }

    before = {1: snap(10, 1_000_000, 100_000, 50_000, 0, 2_000_000)}
    after = {1: snap(20, 3_000_000, 600_000, 250_000, 400_000, 5_000_000), 2: snap(5, 1, 1, 1, 1, 1)}
    figures = per_certificate(before, after)
    per = figures["us_per_certificate"]
    assert figures["certificates"] == 10  # worker 2 started during the phase: left out
    assert per["csr"] == 50.0 and per["tls_http"] == 150.0  # loop 2 ms - marked 0.5 ms, over 10
    assert per["commit_audit"] == 20.0 and per["lint"] == 40.0
    assert per["other_threads"] == 80.0  # process 3 ms - loop 2 ms - commit 0.2 ms
