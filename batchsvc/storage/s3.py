"""Objects in an S3 bucket (MinIO, AWS S3, Ceph) through the minio SDK."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, BinaryIO, cast

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE, DictType
from minio.sse import SseS3

from batchsvc.storage.base import (
    DEFAULT_PART_SIZE,
    ObjectInfo,
    ObjectNotFound,
    StorageUnavailable,
    _check_delete_prefix,
    _check_prefix,
    _ReadsThroughOpen,
    check_key,
    content_disposition,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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
