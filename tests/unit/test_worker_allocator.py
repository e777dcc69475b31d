"""The daemon fixes glibc's mmap threshold and arena count before forking its workers (the soak's RSS
otherwise grew with the CRL size): on this platform's libc both settings are accepted, and a buffer above
the threshold is given back to the system when freed (the process's RSS falls again)."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import ctypes, resource
from ckms_app.daemon.supervisor import tune_allocator, MMAP_THRESHOLD_BYTES
assert tune_allocator()
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
base = rss_kib()
for _ in range(200):  # the pattern of CRL downloads: large buffers allocated and freed in turn
    blobs = [bytearray(512 * 1024) for _ in range(8)]
    for b in blobs:
        b[::4096] = b"x" * len(b[::4096])
    del blobs
print(rss_kib() - base)
"""


def test_large_buffers_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    grown_kib = int(out.stdout.strip())
    assert grown_kib < 2048, f"RSS grew by {grown_kib} KiB after large buffers were freed"
