"""A tap between the daemon and the real ckms-lint, for the supervision test: it passes every request on
unchanged (the real helper's answers go straight back to the daemon) and appends the serial of every
certificate it was asked to lint to a log, so the test can prove that nothing was issued unlinted.

Run as ``python lint_tap.py REAL_BINARY LOG [helper args...]``.
"""

from __future__ import annotations

import struct
import subprocess
import sys

_LEN = struct.Struct(">I")


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``offset``."""
    tag, first = data[offset], data[offset + 1]
    pos = offset + 2
    size = first
    if first & 0x80:
        count = first & 0x7F
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, pos, pos + size


def serial_of(cert_der: bytes) -> str:
    _, tbs_start, _ = _element(cert_der, 0)  # Certificate
    _, pos, _ = _element(cert_der, tbs_start)  # TBSCertificate
    tag, start, end = _element(cert_der, pos)
    if tag == 0xA0:  # [0] version
        tag, start, end = _element(cert_der, end)
    return format(int.from_bytes(cert_der[start:end], "big"), "x")


def main() -> None:
    real, log_path, *args = sys.argv[1:]
    helper = subprocess.Popen([real, *args], stdin=subprocess.PIPE)  # stdout, stderr: the daemon's pipes
    assert helper.stdin is not None
    stdin = sys.stdin.buffer
    with open(log_path, "a") as log:
        while header := stdin.read(5):
            (size,) = _LEN.unpack(header[1:5])
            der = stdin.read(size)
            if header[:1] == b"C":
                log.write(serial_of(der) + "\n")
                log.flush()
            helper.stdin.write(header + der)
            helper.stdin.flush()
    helper.stdin.close()
    helper.wait()


if __name__ == "__main__":
    main()
