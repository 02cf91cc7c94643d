"""Encryption at rest: with `s3_sse` set, every write to S3 asks for server-side
encryption, whichever way it writes (single PUT, multipart, streamed, conditional).
Checked on a moto S3 server, which keeps what each write asked for."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchsvc.storage.s3 import S3Storage
from tests.support.moto_server import MotoServer

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer.start() as server:
        yield server


def make_s3(moto: MotoServer, sse: bool) -> S3Storage:
    bucket = f"sse-{uuid.uuid4().hex[:16]}"
    return S3Storage(moto.endpoint, "test", "test", bucket, secure=False, sse=sse, part_size=5 * MiB)


def encryption_of(s3: S3Storage, key: str) -> str | None:
    metadata = s3._client().stat_object(s3.bucket, key).metadata
    return {k.lower(): v for k, v in metadata.items()}.get("x-amz-server-side-encryption")


def write_every_way(s3: S3Storage, tmp_path: Path) -> list[str]:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (11 * MiB))  # three parts: the multipart path
    s3.put_bytes("tenants/a/one.json", b"{}")
    s3.put_file("tenants/a/big.jsonl", big)
    s3.put_stream("tenants/a/streamed.jsonl", io.BytesIO(b"y" * (6 * MiB)))
    assert s3.put_bytes_if_absent("tenants/a/summary.json", b"{}")
    return ["tenants/a/one.json", "tenants/a/big.jsonl", "tenants/a/streamed.jsonl", "tenants/a/summary.json"]


def test_with_s3_sse_every_write_asks_for_encryption(moto: MotoServer, tmp_path: Path) -> None:
    s3 = make_s3(moto, sse=True)
    assert {key: encryption_of(s3, key) for key in write_every_way(s3, tmp_path)} == dict.fromkeys(
        ["tenants/a/one.json", "tenants/a/big.jsonl", "tenants/a/streamed.jsonl", "tenants/a/summary.json"], "AES256"
    )


def test_without_it_no_write_asks(moto: MotoServer, tmp_path: Path) -> None:
    s3 = make_s3(moto, sse=False)
    assert [encryption_of(s3, key) for key in write_every_way(s3, tmp_path)] == [None] * 4
