"""Files, as the OpenAI Files API sees them: an id, a name, a purpose, a size,
and the storage key of the bytes. Input files are uploaded; a batch's output and
error files are registered by finalize and point at the job's result objects."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from batchsvc.access import DEFAULT_TENANT
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.store.paging import PagedIndex, newest_first


class FileNotFound(ServiceError):
    def __init__(self, file_id: str):
        super().__init__(ErrorType.NOT_FOUND, f"no file with id {file_id!r}", {"file_id": file_id})


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def derived_file_id(job_id: str, kind: str) -> str:
    """The id of a job's output or error file: the same on every finalize run."""
    return "file-" + hashlib.blake2b(f"{job_id}:{kind}".encode(), digest_size=12).hexdigest()


@dataclass
class FileRecord:
    id: str
    filename: str
    purpose: str  # "batch" (input), "batch_output"
    size: int  # bytes
    key: str  # storage key of the content
    created_at: float = field(default_factory=time.time)
    job_id: str | None = None  # the batch an output file belongs to
    tenant: str = DEFAULT_TENANT  # whose file: only that tenant's keys (and admins) see it
    lines: int | None = None  # newline count of an upload: what a batch of it would queue

    def to_fields(self) -> dict[str, bytes]:
        return {f.name: orjson.dumps(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> FileRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in names})


class FileStore(PagedIndex[FileRecord]):
    """File records in Redis: `{p}:file:{id}` hashes, a `{p}:files` index and
    one `{p}:t:{tenant}:files` index per tenant."""

    def __init__(self, client: redis.Redis, prefix: str = "batchsvc"):
        self.redis: Any = client
        self.prefix = prefix

    def _key(self, file_id: str) -> str:
        return f"{self.prefix}:file:{file_id}"

    def _index(self, tenant: str | None = None) -> str:
        return f"{self.prefix}:files" if tenant is None else f"{self.prefix}:t:{tenant}:files"

    def save(self, record: FileRecord) -> FileRecord:
        pipe = self.redis.pipeline()
        pipe.hset(self._key(record.id), mapping=record.to_fields())
        pipe.zadd(self._index(), {record.id: record.created_at})
        pipe.zadd(self._index(record.tenant), {record.id: record.created_at})
        pipe.execute()
        return record

    def find(self, file_id: str) -> FileRecord | None:
        """The record, or None when there is none."""
        raw = self.redis.hgetall(self._key(file_id))
        return FileRecord.from_fields(raw) if raw else None

    def get(self, file_id: str) -> FileRecord:
        record = self.find(file_id)
        if record is None:
            raise FileNotFound(file_id)
        return record

    def delete(self, record: FileRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._key(record.id))
        pipe.zrem(self._index(), record.id)
        pipe.zrem(self._index(record.tenant), record.id)
        pipe.execute()

    def list_ids(self, *, limit: int = 20, after: str | None = None, tenant: str | None = None) -> list[str]:
        """File ids, newest first, of one tenant or all; `after` is the last id of
        the previous page."""
        ids = newest_first(self.redis, self._index(tenant), limit=limit, after=after)
        if ids is None:
            raise FileNotFound(after or "")
        return ids
