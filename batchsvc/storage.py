"""Object storage behind one small interface: a local directory or an S3 bucket.

Both backends raise the same two exceptions: `ObjectNotFound` for a missing key and
`StorageUnavailable` for anything a retry may fix (the one exception tasks should
retry on). Other failures (bad credentials, access denied, a full disk) propagate
unchanged: no retry will fix them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, cast
from urllib.parse import quote

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE, DictType
from minio.sse import SseS3

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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


def _copy_atomically(src: BinaryIO, dest: Path) -> None:
    tmp, _, _, _ = _write_temp(dest.parent, src)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


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
        dest = self.path(key)
        tmp, size, etag, st = _write_temp(dest.parent, src)
        try:
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "ConditionalRequestConflict",  # a concurrent conditional write: retry to learn who won
}
# Connection-level failures: from urllib3 itself or from the socket beneath it.
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _http_client() -> urllib3.PoolManager:
    # minio's default waits 5 minutes per attempt and retries 5 times, which turns an outage
    # into a hang. Connect retries are always safe (nothing was sent). Read retries are off:
    # a PUT whose answer was lost may have been applied, and re-sent with If-None-Match it
    # would report 'exists' for the object it created itself.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        retries=urllib3.Retry(
            total=3, connect=2, read=0, status=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
        ),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


class _ResponseReader(io.RawIOBase):
    """A GET response as a raw stream; network errors become StorageUnavailable."""

    def __init__(self, response: urllib3.BaseHTTPResponse):
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        try:
            return self._response.readinto(cast(bytearray, buffer))
        except _NETWORK_ERRORS as exc:
            raise StorageUnavailable(f"reading object failed: {exc}") from exc

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class _CountingReader:
    """Counts what minio reads, since a streamed upload's result carries no size."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


class S3Storage(_ReadsThroughOpen):
    """Objects in one bucket of an S3-compatible store (MinIO, AWS, ...), via the minio SDK.

    Clients are made on first use and remade after a fork: a connection pool shared by
    two processes interleaves their requests on one socket.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        public_endpoint: str | None = None,
        sse: bool = False,
    ):
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        self.bucket = bucket
        self._endpoint = endpoint
        self._access_key = access_key
        self._secret_key = secret_key
        self._secure = secure
        self._region = region or None
        self._part_size = part_size
        self._public_endpoint = public_endpoint or None
        self._sse = SseS3() if sse else None
        self._pid: int | None = None
        self._minio: Minio | None = None
        self._presigner: Minio | None = None
        self._bucket_ready = False

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._minio = self._presigner = None
            self._bucket_ready = False

    def _client(self) -> Minio:
        # Unlocked on purpose: two threads racing here at worst make two clients and
        # check the bucket twice, and a lock would itself be unsafe across fork.
        self._forget_if_forked()
        if self._minio is None:
            self._minio = Minio(
                self._endpoint,
                access_key=self._access_key,
                secret_key=self._secret_key,
                secure=self._secure,
                region=self._region,
                http_client=_http_client(),
            )
        if not self._bucket_ready:
            try:
                if not self._minio.bucket_exists(self.bucket):
                    self._minio.make_bucket(self.bucket, location=self._region)
            except S3Error as exc:
                # Another process made it between our check and our create.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            self._bucket_ready = True
        return self._minio

    def _presign_client(self) -> Minio:
        # Presigning is pure computation when the region is known: without one, minio would
        # ask the server for the bucket's region, and the public host may not be reachable
        # from here. No region configured means us-east-1, MinIO's default.
        self._forget_if_forked()
        if self._presigner is None:
            endpoint, secure = self._public_endpoint or self._endpoint, self._secure
            for scheme, is_secure in (("https://", True), ("http://", False)):
                if endpoint.startswith(scheme):
                    endpoint, secure = endpoint.removeprefix(scheme).rstrip("/"), is_secure
            self._presigner = Minio(
                endpoint,
                access_key=self._access_key,
                secret_key=self._secret_key,
                secure=secure,
                region=self._region or "us-east-1",
            )
        return self._presigner

    @contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                self._bucket_ready = False  # removed behind our back: recreate on next use
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFound(key or exc.object_name or "") from exc
            if exc.code in _TRANSIENT_CODES or exc.response.status >= 500:
                raise StorageUnavailable(str(exc)) from exc
            raise
        except ServerError as exc:
            if exc.status_code >= 500:
                raise StorageUnavailable(str(exc)) from exc
            raise
        except InvalidResponseError as exc:
            # A non-S3 answer comes from whatever sits in front of the store (a proxy's 502
            # page while it restarts), so treat it like an outage.
            raise StorageUnavailable(str(exc)) from exc
        except _NETWORK_ERRORS as exc:
            raise StorageUnavailable(f"S3 endpoint {self._endpoint} unreachable: {exc}") from exc

    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        check_key(key)
        size = os.path.getsize(path)
        with self._errors(key):
            result = self._client().fput_object(
                self.bucket, key, os.fspath(path), content_type, sse=self._sse, part_size=self._part_size
            )
        return ObjectInfo(key, size, result.etag or "")

    def put_stream(self, key: str, stream: BinaryIO, content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        counted = _CountingReader(stream)
        # length=-1 makes minio read one part at a time: memory stays at a few parts.
        with self._errors(key):
            result = self._client().put_object(
                self.bucket,
                key,
                cast(BinaryIO, counted),
                length=-1,
                content_type=content_type,
                sse=self._sse,
                part_size=self._part_size,
            )
        return ObjectInfo(key, counted.count, result.etag or "")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        with self._errors(key):
            result = self._client().put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                sse=self._sse,
                part_size=self._part_size,
            )
        return ObjectInfo(key, len(data), result.etag or "")

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        check_key(key)
        headers: DictType = {"Content-Type": content_type, "If-None-Match": "*"}
        headers.update(self._sse.headers() if self._sse else {})
        with self._errors(key):
            client = self._client()
            try:
                # minio's public put_object turns unknown headers into x-amz-meta-* user
                # metadata, so If-None-Match has to go through its single-PUT helper.
                # AWS, MinIO and moto (5.2.5) all answer 412 PreconditionFailed if the key
                # exists; tests/unit/test_storage.py would catch a minio upgrade that breaks this.
                client._put_object(self.bucket, key, data, headers)
            except S3Error as exc:
                if exc.code == "PreconditionFailed":
                    return False
                raise
        return True

    def open(self, key: str) -> io.BufferedReader:
        check_key(key)
        with self._errors(key):
            response = self._client().get_object(self.bucket, key)
        return io.BufferedReader(_ResponseReader(response), buffer_size=64 * 1024)

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        with self._errors(key):
            obj = self._client().stat_object(self.bucket, key)
        return ObjectInfo(key, obj.size or 0, (obj.etag or "").strip('"'))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # S3 lists keys in UTF-8 byte order, which is the order of Python's str sort.
        _check_prefix(prefix)
        with self._errors():
            for obj in self._client().list_objects(self.bucket, prefix=prefix or None, recursive=True):
                if obj.object_name is not None and not obj.is_dir:
                    yield ObjectInfo(obj.object_name, obj.size or 0, (obj.etag or "").strip('"'))

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            with self._errors(key):
                self._client().remove_object(self.bucket, key)
        except ObjectNotFound:
            pass

    def delete_prefix(self, prefix: str) -> int:
        _check_delete_prefix(prefix)
        listed = 0

        def to_delete(client: Minio) -> Iterator[DeleteObject]:
            nonlocal listed
            for obj in client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None:
                    listed += 1
                    yield DeleteObject(obj.object_name)

        with self._errors():
            client = self._client()
            # remove_objects is lazy: it sends nothing until its error iterator is consumed.
            errors = [*client.remove_objects(self.bucket, to_delete(client))]
        if errors:
            first = errors[0]
            raise StorageUnavailable(
                f"{len(errors)} of {listed} deletes under {prefix!r} failed, first: {first.code} {first.message}"
            )
        return listed

    def presigned_get_url(self, key: str, expires: timedelta, download_name: str | None = None) -> str:
        check_key(key)
        headers: DictType | None = None
        if download_name:
            headers = {"response-content-disposition": content_disposition(download_name)}
        return self._presign_client().presigned_get_object(self.bucket, key, expires, response_headers=headers)
