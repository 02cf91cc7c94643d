"""Both storage backends against the same expectations; S3 runs against a real moto server."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from batchsvc.storage.base import DEFAULT_PART_SIZE, InvalidDownloadToken, ObjectNotFound, Storage, StorageUnavailable
from batchsvc.storage.local import LocalStorage
from batchsvc.storage.s3 import S3Storage
from tests.support.moto_server import MotoServer, free_port

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MiB = 1024 * 1024
SIGNING_KEY = b"test-signing-key"


class GeneratedStream(io.RawIOBase):
    """A seeded pseudo-random byte stream of a given length, produced chunk by chunk."""

    def __init__(self, size: int, seed: int = 7):
        self._rng = random.Random(seed)
        self._left = size
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if not self._pending and self._left:
            self._pending = self._rng.randbytes(min(MiB, self._left))
            self._left -= len(self._pending)
        view = memoryview(buffer)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def generated_sha256(size: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    with io.BufferedReader(GeneratedStream(size, seed)) as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer.start() as server:
        yield server


def make_s3(moto: MotoServer, **kwargs: Any) -> S3Storage:
    # A bucket per test keeps tests independent on the one shared server.
    return S3Storage(moto.endpoint, "test", "test", f"t-{uuid.uuid4().hex[:16]}", secure=False, **kwargs)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store", "http://files.test", SIGNING_KEY)
    return make_s3(request.getfixturevalue("moto"), region="us-east-1")


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", "http://files.test/", SIGNING_KEY)


def test_stream_larger_than_a_part_round_trips(storage: Storage) -> None:
    size = DEFAULT_PART_SIZE + 3 * MiB + 123  # two parts on S3, the second one short
    info = storage.put_stream("jobs/a/big.bin", io.BufferedReader(GeneratedStream(size)))
    assert info.size == size
    assert storage.stat("jobs/a/big.bin").size == size

    digest = hashlib.sha256()
    with storage.open("jobs/a/big.bin") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    assert digest.hexdigest() == generated_sha256(size)


def test_put_file_and_download(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "source.jsonl"
    source.write_bytes(b'{"a": 1}\n' * 1000)
    info = storage.put_file("jobs/a/input.jsonl", source, content_type="application/jsonl")
    assert (info.key, info.size) == ("jobs/a/input.jsonl", 9000)
    assert storage.stat("jobs/a/input.jsonl") == info

    target = tmp_path / "out" / "copy.jsonl"
    storage.download("jobs/a/input.jsonl", target)
    assert target.read_bytes() == source.read_bytes()


def test_open_reads_lines(storage: Storage) -> None:
    storage.put_bytes("k.jsonl", b"one\ntwo\n")
    with storage.open("k.jsonl") as stream:
        assert list(stream) == [b"one\n", b"two\n"]


def test_put_bytes_stat_exists_and_etag(storage: Storage) -> None:
    assert not storage.exists("m.json")
    info = storage.put_bytes("m.json", b"{}", content_type="application/json")
    assert storage.exists("m.json")
    assert storage.get_bytes("m.json") == b"{}"
    assert storage.stat("m.json").size == 2
    assert storage.stat("m.json").etag == info.etag
    assert storage.put_bytes("other.json", b"{}").etag == info.etag  # same content, same etag
    assert storage.put_bytes("m.json", b"[1]").etag != info.etag


def test_overwrite_replaces_content(storage: Storage) -> None:
    storage.put_bytes("k", b"first version")
    storage.put_bytes("k", b"second")
    assert storage.get_bytes("k") == b"second"


def test_missing_key_raises_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.open("nope/missing")
    with pytest.raises(ObjectNotFound):
        storage.stat("nope/missing")
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("nope/missing")
    storage.delete("nope/missing")  # deleting what is not there is fine


def test_list_is_recursive_sorted_and_prefix_based(storage: Storage) -> None:
    keys = ["jobs/b/x", "jobs/a/2", "jobs/a/10", "jobs/a.txt", "jobs/a/sub/deep", "jobs/ab/1", "other/z"]
    for key in keys:
        storage.put_bytes(key, key.encode())

    listed = list(storage.list("jobs/"))
    assert [o.key for o in listed] == sorted(k for k in keys if k.startswith("jobs/"))
    assert {o.key: o.size for o in listed}["jobs/a/sub/deep"] == len(b"jobs/a/sub/deep")
    assert [o.key for o in storage.list("jobs/a/")] == ["jobs/a/10", "jobs/a/2", "jobs/a/sub/deep"]
    assert [o.key for o in storage.list("jobs/a")] == [
        "jobs/a.txt",
        "jobs/a/10",
        "jobs/a/2",
        "jobs/a/sub/deep",
        "jobs/ab/1",
    ]
    assert list(storage.list("missing/")) == []


def test_delete_and_delete_prefix(storage: Storage) -> None:
    for key in ["jobs/1/a", "jobs/1/shards/00000/out", "jobs/10/a", "jobs/2/a"]:
        storage.put_bytes(key, b"x")
    storage.delete("jobs/2/a")
    assert not storage.exists("jobs/2/a")

    assert storage.delete_prefix("jobs/1/") == 2
    assert [o.key for o in storage.list("jobs/")] == ["jobs/10/a"]
    assert storage.delete_prefix("jobs/1/") == 0
    with pytest.raises(ValueError):
        storage.delete_prefix("")


def test_put_bytes_if_absent_creates_once(storage: Storage) -> None:
    assert storage.put_bytes_if_absent("locks/job-1", b"worker-a") is True
    assert storage.put_bytes_if_absent("locks/job-1", b"worker-b") is False
    assert storage.get_bytes("locks/job-1") == b"worker-a"


def test_put_bytes_if_absent_has_one_winner_under_contention(local: LocalStorage) -> None:
    results: list[bool] = []
    start = threading.Barrier(8)

    def claim(n: int) -> None:
        start.wait()
        results.append(local.put_bytes_if_absent("claim", f"worker-{n}".encode()))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert local.get_bytes("claim").startswith(b"worker-")
    assert [o.key for o in local.list("")] == ["claim"]  # no temp files left behind


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "a\\b", "a\x00b", ".batchsvc-tmp-x"]
)
def test_bad_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        storage.stat(key)


def test_local_keys_stay_under_root(local: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        local.put_bytes("../outside", b"x")
    with pytest.raises(ValueError):
        list(local.list("../"))
    assert not (tmp_path / "outside").exists()
    assert local.path("a/b.txt") == tmp_path / "store" / "a" / "b.txt"


def test_local_write_is_atomic_on_failure(local: LocalStorage) -> None:
    local.put_bytes("k", b"old")

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: WriteableBuffer) -> int:
            raise OSError("source died")

    with pytest.raises(OSError, match="source died"):
        local.put_stream("k", io.BufferedReader(Broken()))
    assert local.get_bytes("k") == b"old"
    assert [o.key for o in local.list("")] == ["k"]


def test_local_download_token_round_trip(local: LocalStorage) -> None:
    url = local.presigned_get_url("jobs/a/results.jsonl", timedelta(minutes=5), download_name="résultats.jsonl")
    assert url.startswith("http://files.test/v1/downloads/")
    token = url.rsplit("/", 1)[1]
    assert local.verify_download_token(token) == ("jobs/a/results.jsonl", "résultats.jsonl")

    plain = local.presigned_get_url("k", timedelta(minutes=5)).rsplit("/", 1)[1]
    assert local.verify_download_token(plain) == ("k", None)


def test_local_download_token_rejects_tampering_expiry_and_garbage(local: LocalStorage) -> None:
    token = local.presigned_get_url("jobs/a/results.jsonl", timedelta(seconds=60)).rsplit("/", 1)[1]
    payload, signature = token.split(".")

    forged = local.presigned_get_url("jobs/b/results.jsonl", timedelta(seconds=60)).rsplit("/", 1)[1]
    with pytest.raises(InvalidDownloadToken) as excinfo:
        local.verify_download_token(forged.split(".")[0] + "." + signature)
    assert excinfo.value.reason == "tampered"

    other_key = LocalStorage(local.root, "http://files.test", b"another-key")
    with pytest.raises(InvalidDownloadToken, match="tampered"):
        other_key.verify_download_token(token)

    with pytest.raises(InvalidDownloadToken) as excinfo:
        local.verify_download_token(token, now=time.time() + 61)
    assert excinfo.value.reason == "expired"

    for garbage in ["", "abc", "a.b.c", "a b.c", payload + ".", payload + ".x"]:
        with pytest.raises(InvalidDownloadToken, match="malformed"):
            local.verify_download_token(garbage)


def test_s3_presigned_url_serves_content(moto: MotoServer) -> None:
    s3 = make_s3(moto)
    s3.put_bytes("jobs/a/results.jsonl", b'{"ok": true}\n', content_type="application/jsonl")
    url = s3.presigned_get_url("jobs/a/results.jsonl", timedelta(minutes=5), download_name="résultats.jsonl")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b'{"ok": true}\n'
        disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="r_sultats.jsonl"')
    assert "filename*=UTF-8''r%C3%A9sultats.jsonl" in disposition


def test_s3_public_endpoint_is_used_for_presigning_only(moto: MotoServer) -> None:
    # The public host does not resolve here: presigning must not need the network.
    s3 = make_s3(moto, public_endpoint="https://files.example.invalid")
    url = s3.presigned_get_url("k", timedelta(minutes=5))
    assert url.startswith(f"https://files.example.invalid/{s3.bucket}/k?")


def test_s3_server_side_encryption(moto: MotoServer) -> None:
    s3 = make_s3(moto, sse=True)
    s3.put_bytes("a", b"secret")
    assert s3.put_bytes_if_absent("b", b"secret") is True
    assert s3.get_bytes("a") == s3.get_bytes("b") == b"secret"


def test_s3_client_is_made_lazily_and_remade_after_fork(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = make_s3(moto)
    assert s3._minio is None  # constructing connects to nothing
    s3.put_bytes("k", b"v")
    first = s3._minio
    monkeypatch.setattr("os.getpid", lambda: -1)  # what a forked child would see
    assert s3.get_bytes("k") == b"v"
    assert s3._minio is not first


def test_s3_partial_read_then_reuse(moto: MotoServer) -> None:
    s3 = make_s3(moto)
    s3.put_stream("big", io.BufferedReader(GeneratedStream(6 * MiB)))
    for _ in range(3):  # abandoning a body must not leak or wedge pooled connections
        with s3.open("big") as stream:
            assert len(stream.read(10)) == 10
    assert s3.stat("big").size == 6 * MiB


def test_s3_unreachable_raises_storage_unavailable() -> None:
    s3 = S3Storage(f"127.0.0.1:{free_port()}", "test", "test", "bucket", secure=False, region="us-east-1")
    with pytest.raises(StorageUnavailable):
        s3.stat("k")
    with pytest.raises(StorageUnavailable):
        s3.put_bytes("k", b"v")
    with pytest.raises(StorageUnavailable):
        list(s3.list(""))


class _FailingS3(BaseHTTPRequestHandler):
    """Answers like an S3 endpoint in trouble: an S3 error document, or a proxy's page for /proxy."""

    def _fail(self) -> None:
        if self.path.startswith("/proxy"):
            body, content_type, status = b"<html>Bad Gateway</html>", "text/html", 502
        else:
            body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
            content_type, status = "application/xml", 503
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("bucket", ["xml-503", "proxy"])
def test_s3_server_errors_raise_storage_unavailable(bucket: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s3 = S3Storage(f"127.0.0.1:{server.server_port}", "test", "test", bucket, secure=False, region="us-east-1")
        with pytest.raises(StorageUnavailable):
            s3.get_bytes("k")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_second_spelling_of_a_valid_signature_is_refused(local: LocalStorage) -> None:
    """A 32-byte HMAC in unpadded base64 leaves 2 spare bits in its last
    character: flipping one decodes to the same bytes, and must still fail."""
    import base64

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    local.put_bytes("a/b.txt", b"x")
    token = local.presigned_get_url("a/b.txt", timedelta(minutes=1)).rsplit("/", 1)[1]
    payload, signature = token.split(".")
    respelled = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]

    def decoded(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    assert respelled != signature and decoded(respelled) == decoded(signature)
    with pytest.raises(InvalidDownloadToken, match="tampered"):
        local.verify_download_token(f"{payload}.{respelled}")
