"""Object storage behind one small interface: a local directory or an S3 bucket.

Both backends raise the same two exceptions: `ObjectNotFound` for a missing key and
`StorageUnavailable` for anything a retry may fix (the one exception tasks should
retry on). Other failures (bad credentials, access denied, a full disk) propagate
unchanged: no retry will fix them.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    pass

DEFAULT_PART_SIZE = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
# Temp files live next to their final name (os.replace must not cross filesystems);
# this prefix hides them from list() and is refused in keys so nothing can collide.
_TMP_PREFIX = ".batchsvc-tmp-"


class ObjectNotFound(Exception):
    """The key does not exist (the one 'missing' error of every backend)."""


class StorageUnavailable(Exception):
    """The backend could not be reached or failed transiently; retrying may succeed."""


class InvalidDownloadToken(Exception):
    """A local download token that must not be honoured."""

    def __init__(self, reason: Literal["malformed", "tampered", "expired"], detail: str = ""):
        self.reason = reason
        super().__init__(f"download token is {reason}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class Storage(Protocol):
    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> ObjectInfo: ...
    def put_stream(self, key: str, stream: BinaryIO, content_type: str = "application/octet-stream") -> ObjectInfo: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo: ...
    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool: ...
    def open(self, key: str) -> AbstractContextManager[BinaryIO]: ...
    def download(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def stat(self, key: str) -> ObjectInfo: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def presigned_get_url(self, key: str, expires: timedelta, download_name: str | None = None) -> str: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the local root or alias another key.

    Both backends apply it, so a key that works on S3 also works locally.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or segment.startswith(_TMP_PREFIX):
            raise ValueError(f"invalid storage key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    # A prefix may end in '/' or in half a name; only its directory part must be a valid key.
    if "\\" in prefix or "\x00" in prefix or prefix.startswith("/"):
        raise ValueError(f"invalid storage prefix {prefix!r}")
    directory = prefix.rpartition("/")[0]
    if directory:
        check_key(directory)
    return prefix


def _may_hold(directory: str, prefix: str) -> bool:
    """Whether keys under directory ('a/b/') can start with prefix."""
    return directory.startswith(prefix) or prefix.startswith(directory)


def _check_delete_prefix(prefix: str) -> str:
    # An empty prefix would wipe the whole store: never what a caller means.
    if not prefix:
        raise ValueError("delete_prefix needs a non-empty prefix")
    return _check_prefix(prefix)


def content_disposition(name: str) -> str:
    # RFC 6266: an ASCII fallback for old clients plus the exact UTF-8 name.
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _copy_atomically(src: BinaryIO, dest: Path) -> tuple[int, str, os.stat_result]:
    """Write src to dest whole or not at all; its size, SHA-256 and stat."""
    tmp, size, etag, st = _write_temp(dest.parent, src)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, etag, st


def _create_temp(directory: Path) -> tuple[int, Path]:
    for _ in range(3):
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            # 0o666 so the umask, not mkstemp's 0o600, decides who may read the object.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileNotFoundError:
            continue  # delete_prefix pruned the directory between mkdir and open
    raise StorageUnavailable(f"could not create a temporary file in {directory}")


def _write_temp(directory: Path, src: BinaryIO) -> tuple[Path, int, str, os.stat_result]:
    """Copy src into a fresh temp file in directory, fsynced, so a rename publishes it whole."""
    fd, tmp = _create_temp(directory)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
            st = os.fstat(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, size, digest.hexdigest(), st


class _ReadsThroughOpen:
    """What both backends do the same way once they can open an object."""

    def open(self, key: str) -> io.BufferedReader:
        raise NotImplementedError

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        with self.open(key) as src:
            _copy_atomically(src, Path(path))

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as src:
            return src.read()
