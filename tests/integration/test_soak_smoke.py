"""A few seconds of ``make soak`` (``ckms_lab.soak``) in the suite: the mixed load runs clean end to end.

The real run (``make soak``: 200 requests/s for 10 minutes) is too long for the suite; this proves the
harness and the daemon agree on every operation of the mix, with nothing failing and nothing leaking.
"""

from __future__ import annotations

from pathlib import Path

from ckms_lab.soak import soak


def test_soak_smoke(tmp_path: Path) -> None:
    result = soak(5.0, 40.0, threads=4, sample=2.5, workdir=tmp_path)
    assert result["requests"] == 200, result
    assert set(result["by_operation"]) == {"enrol", "reenrol", "revoke", "crl", "bad"}, result
    assert result["errors_good_requests"] == 0 and result["errors_bad_requests"] == 0, result["error_samples"]
    assert result["daemon_tracebacks"] == 0 and result["daemon_exit"] == 0
    assert result["latency_ms"]["all"]["p99"] < 2000  # a smoke, not a performance bound
    start, end = result["daemon_start"], result["daemon_end"]
    assert end["processes"] == start["processes"]
    assert end["open_fds"] <= start["open_fds"] + 20, (start, end)
