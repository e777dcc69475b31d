"""``ckms terminal enrol-batch``: the CSRs of a production run in, their certificates out.

Idempotent and resumable. Each request is known by the SHA-256 of its DER; ``OUT/manifest.jsonl`` gets
one line per certificate written (appended, flushed and fsynced after the certificate file is in place),
so a rerun skips everything already done and a killed run resumes where it stopped. A request that was
answered but not yet recorded when the run died is sent again, and the daemon answers the same request
with the certificate it already issued (``csr.duplicate_csr = "return-existing"``, the default): no
certificate is ever issued twice for one request. Failures are not recorded as done: a rerun retries
them; the last run's failures are in ``OUT/failed.jsonl``.

Input is read without extracting anything to disk: a directory (``*.csr``, ``*.pem``, recursively) or
a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive; each member is bounded in size and only regular
files are read, so an archive cannot write outside OUT or exhaust memory.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.cli.client import CkmsClient
from ckms_app.errors import ClientError

MAX_CSR_BYTES = 64 * 1024
MAX_ITEMS = 1_000_000
SUFFIXES = (".csr", ".pem")
MANIFEST = "manifest.jsonl"
FAILED = "failed.jsonl"
Translate = Callable[[str], str]


def _english(text: str) -> str:
    return text


@dataclass(frozen=True)
class Item:
    """One request of the batch: its name in the input, its DER (or why it could not be read)."""

    name: str
    der: bytes
    sha256: str
    error: str | None = None


def _item(name: str, data: bytes, _: Translate) -> Item:
    if len(data) > MAX_CSR_BYTES:
        return Item(name, b"", "", _("larger than {limit} bytes").format(limit=MAX_CSR_BYTES))
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except ValueError as exc:
        return Item(name, b"", "", _("not a PKCS#10 certificate request: {reason}").format(reason=exc))
    der = csr.public_bytes(serialization.Encoding.DER)
    return Item(name, der, hashlib.sha256(der).hexdigest())


def _members(src: Path, skip: Path, _: Translate) -> Iterator[tuple[str, bytes]]:
    name = src.name.lower()
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            if path.suffix.lower() in SUFFIXES and path.is_file() and skip not in path.parents:
                with path.open("rb") as f:
                    yield str(path.relative_to(src)), f.read(MAX_CSR_BYTES + 1)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        try:
            with tarfile.open(src, "r:*") as tar:
                for member in tar:
                    if member.isfile() and member.name.lower().endswith(SUFFIXES):
                        member_file = tar.extractfile(member)
                        if member_file is not None:
                            yield member.name, member_file.read(MAX_CSR_BYTES + 1)
        except tarfile.TarError as exc:
            raise ClientError(
                _("{src}: not a readable tar archive: {reason}").format(src=src, reason=exc)
            ) from None
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(src) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.filename.lower().endswith(SUFFIXES):
                        with zf.open(info) as zip_member:
                            yield info.filename, zip_member.read(MAX_CSR_BYTES + 1)
        except zipfile.BadZipFile as exc:
            raise ClientError(
                _("{src}: not a readable zip archive: {reason}").format(src=src, reason=exc)
            ) from None
    else:
        raise ClientError(
            _("{src}: give a directory of *.csr/*.pem or a .tar, .tar.gz, .tgz or .zip archive").format(
                src=src
            )
        )


def read_items(src: Path, out: Path, _: Translate = _english) -> list[Item]:
    """Every request in ``src`` (never anything under ``out``), in name order."""
    if not src.exists():
        raise ClientError(_("{src}: no such file or directory").format(src=src))
    items: list[Item] = []
    for name, data in _members(src, out.resolve(), _):
        items.append(_item(name, data, _))
        if len(items) > MAX_ITEMS:
            raise ClientError(
                _("{src}: more than {limit} requests: split the batch").format(src=src, limit=MAX_ITEMS)
            )
    return sorted(items, key=lambda i: i.name)


def cert_name(item: Item) -> str:
    """The certificate's file name in OUT: the input's path flattened, its suffix replaced."""
    stem = item.name.rsplit(".", 1)[0].replace("\\", "/").strip("/").replace("/", "__").replace("..", "_")
    return f"{stem or item.sha256[:16]}.cert.pem"


class Manifest:
    """``OUT/manifest.jsonl``: one JSON line per request done, keyed by the request's SHA-256."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.done: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a line cut by a kill: drop it, that request is redone
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["sha256"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: ignored
        self._file = self.path.open("a")

    def add(self, entry: dict[str, str]) -> None:
        with self._lock:
            self._file.write(json.dumps(entry, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.done[entry["sha256"]] = entry

    def close(self) -> None:
        self._file.close()


@dataclass
class Summary:
    total: int = 0
    issued: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.issued + self.skipped + len(self.failed)


class Progress:
    """A bar redrawn in place on a terminal; otherwise a plain count line every tenth of the batch."""

    def __init__(self, stream: TextIO, total: int, label: Callable[[Summary], str]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._total = total
        self._label = label
        self._step = max(1, total // 10)
        self._lock = threading.Lock()

    def update(self, summary: Summary) -> None:
        with self._lock:
            n = summary.finished
            if self._tty:
                width = 30
                filled = width * n // max(1, self._total)
                bar = "#" * filled + "." * (width - filled)
                self._stream.write(f"\r[{bar}] {n}/{self._total} {self._label(summary)}")
                if n == self._total:
                    self._stream.write("\n")
            elif n % self._step == 0 or n == self._total:
                self._stream.write(f"{n}/{self._total} {self._label(summary)}\n")
            self._stream.flush()


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def enrol_batch(
    items: list[Item],
    out: Path,
    connect: Callable[[], CkmsClient],
    *,
    workers: int,
    profile: str | None,
    progress: Progress | None,
    _: Translate = _english,
) -> Summary:
    """Enrol every item not yet in the manifest over ``workers`` parallel connections."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    summary = Summary(total=len(items))
    lock = threading.Lock()
    local = threading.local()
    clients: list[CkmsClient] = []
    names: dict[str, str] = {}  # output file -> the request that owns it in this batch
    seen: set[str] = set()
    todo: list[Item] = []
    for item in items:
        if item.error is not None:
            summary.failed.append((item.name, item.error))
            continue
        target = cert_name(item)
        if item.sha256 in seen:
            summary.skipped += 1  # the same request twice in one batch: one certificate
            continue
        seen.add(item.sha256)
        if names.setdefault(target, item.sha256) != item.sha256:
            summary.failed.append(
                (item.name, _("another request in the batch also maps to {file}").format(file=target))
            )
            continue
        done = manifest.done.get(item.sha256)
        if done is not None and (out / done["cert"]).exists():
            summary.skipped += 1
            continue
        todo.append(item)
    if progress is not None and summary.finished:
        progress.update(summary)

    def client() -> CkmsClient:
        c: CkmsClient | None = getattr(local, "client", None)
        if c is None:
            c = local.client = connect()
            with lock:
                clients.append(c)
        return c

    def one(item: Item) -> None:
        try:
            cert = client().enroll(item.der, label=profile)
            target = cert_name(item)
            write_atomically(out / target, cert.public_bytes(serialization.Encoding.PEM))
            manifest.add(
                {
                    "sha256": item.sha256,
                    "name": item.name,
                    "cert": target,
                    "serial": format(cert.serial_number, "x"),
                    "subject": cert.subject.rfc4514_string(),
                }
            )
        except (ClientError, OSError, ValueError, http.client.HTTPException) as exc:
            with lock:
                summary.failed.append((item.name, str(exc)))
        else:
            with lock:
                summary.issued += 1
        if progress is not None:
            progress.update(summary)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckms-enrol") as pool:
            list(pool.map(one, todo))  # each item's outcome is in the summary
    finally:
        manifest.close()
        for c in clients:
            c.close()
    failed_lines = "".join(
        json.dumps({"name": n, "reason": r}, ensure_ascii=False) + "\n" for n, r in sorted(summary.failed)
    )
    write_atomically(out / FAILED, failed_lines.encode())
    return summary
