"""Objects as files under a local directory, with HMAC-signed download links the API serves."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from batchsvc.storage.base import (
    _TMP_PREFIX,
    InvalidDownloadToken,
    ObjectInfo,
    ObjectNotFound,
    _check_delete_prefix,
    _check_prefix,
    _copy_atomically,
    _may_hold,
    _ReadsThroughOpen,
    _write_temp,
    check_key,
)

if TYPE_CHECKING:
    pass


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class LocalStorage(_ReadsThroughOpen):
    """Objects are files under root. Nothing touches the disk until the first call."""

    def __init__(self, root: str | Path, public_base_url: str, signing_key: bytes):
        if not signing_key:
            raise ValueError("signing_key must not be empty")
        self.root = Path(root).absolute()
        self._public_base_url = public_base_url.rstrip("/")
        self._signing_key = signing_key
        # Hashing is the costly part of stat(); files never change in place (writes
        # replace them), so a hash stays valid for as long as the inode identity does.
        self._etags: dict[tuple[int, int, int, int], str] = {}

    def path(self, key: str) -> Path:
        """Filesystem path of a key (for the download view, which can serve it with sendfile)."""
        return self.root.joinpath(*check_key(key).split("/"))

    def _remember(self, st: os.stat_result, etag: str) -> None:
        if len(self._etags) > 4096:
            self._etags.clear()
        self._etags[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = etag

    def _put(self, key: str, src: BinaryIO) -> ObjectInfo:
        size, etag, st = _copy_atomically(src, self.path(key))
        self._remember(st, etag)
        return ObjectInfo(key, size, etag)

    # The local backend keeps no content type: the download view derives it from the name.
    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        with open(path, "rb") as src:
            return self._put(key, src)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self._put(key, stream)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self._put(key, io.BytesIO(data))

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        dest = self.path(key)
        tmp, _, etag, st = _write_temp(dest.parent, io.BytesIO(data))
        try:
            # link() fails if dest exists and, unlike an O_EXCL create, publishes the
            # content already complete: no reader can see a half-written winner.
            os.link(tmp, dest)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._remember(st, etag)
        return True

    def open(self, key: str) -> io.BufferedReader:
        try:
            return open(self.path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def stat(self, key: str) -> ObjectInfo:
        with self.open(key) as src:
            # fstat the open file so size and hash describe the same version of it.
            st = os.fstat(src.fileno())
            etag = self._etags.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            if etag is None:
                etag = hashlib.file_digest(src, "sha256").hexdigest()
                self._remember(st, etag)
        return ObjectInfo(key, st.st_size, etag)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def _prefix_dir(self, prefix: str) -> Path:
        """The deepest directory that holds every key starting with prefix."""
        directory = _check_prefix(prefix).rpartition("/")[0]
        return self.root.joinpath(*directory.split("/")) if directory else self.root

    def _keys(self, prefix: str) -> Iterator[str]:
        """Keys under prefix, unsorted; walks only the directories that can match."""
        for dirpath, dirnames, filenames in os.walk(self._prefix_dir(prefix)):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if _may_hold(rel + d + "/", prefix)]
            for name in filenames:
                if not name.startswith(_TMP_PREFIX) and (rel + name).startswith(prefix):
                    yield rel + name

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key in sorted(self._keys(prefix)):
            try:
                yield self.stat(key)
            except ObjectNotFound:
                continue  # deleted while we were listing, as on S3

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            os.unlink(self.path(key))

    def delete_prefix(self, prefix: str) -> int:
        _check_delete_prefix(prefix)
        count = 0
        for key in self._keys(prefix):
            try:
                os.unlink(self.path(key))
                count += 1
            except FileNotFoundError:
                pass
        # Drop emptied directories so deleted jobs leave no trees of empty folders behind.
        for dirpath, _, _ in os.walk(self._prefix_dir(prefix), topdown=False):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            if rel != "." and (rel + "/").startswith(prefix):
                with suppress(OSError):  # not empty: a writer got there first
                    os.rmdir(dirpath)
        return count

    def presigned_get_url(self, key: str, expires: timedelta, download_name: str | None = None) -> str:
        check_key(key)
        if expires.total_seconds() <= 0:
            raise ValueError("expires must be positive")
        claims = {"k": key, "e": math.ceil(time.time() + expires.total_seconds()), "n": download_name}
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._signing_key, payload.encode("ascii"), hashlib.sha256).digest()
        return f"{self._public_base_url}/v1/downloads/{payload}.{_b64encode(signature)}"

    def verify_download_token(self, token: str, now: float | None = None) -> tuple[str, str | None]:
        """Return (key, download_name) of a token made by presigned_get_url."""
        if not _TOKEN_RE.fullmatch(token):
            raise InvalidDownloadToken("malformed")
        payload, signature = token.split(".")
        try:
            _b64decode(signature)
        except ValueError:
            raise InvalidDownloadToken("malformed", "bad signature encoding") from None
        expected = hmac.new(self._signing_key, payload.encode("ascii"), hashlib.sha256).digest()
        # Check the signature before reading anything from the payload. Compare
        # the encoded text, not the decoded bytes: base64's spare bits would
        # otherwise let several spellings of one signature pass.
        if not hmac.compare_digest(signature.encode("ascii"), _b64encode(expected).encode("ascii")):
            raise InvalidDownloadToken("tampered")
        try:
            claims = json.loads(_b64decode(payload))
            key, expiry, name = claims["k"], claims["e"], claims["n"]
            if not (isinstance(key, str) and isinstance(expiry, int) and (name is None or isinstance(name, str))):
                raise TypeError
            check_key(key)
        except (ValueError, KeyError, TypeError):
            raise InvalidDownloadToken("malformed", "bad payload") from None
        if (time.time() if now is None else now) >= expiry:
            raise InvalidDownloadToken("expired")
        return key, name


# --- S3 -------------------------------------------------------------------------------

# Codes S3/MinIO use for "try again later" that do not always come with a 5xx.
