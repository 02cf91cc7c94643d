"""The storage manifest of a job: which shards exist and what each holds.

Written once by prepare; shards, finalize and recovery read it. Together with
the per-shard summaries it lets a job be rebuilt from storage alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from batchsvc.access import DEFAULT_TENANT
from batchsvc.storage import layout
from batchsvc.storage.base import Storage


@dataclass(frozen=True)
class ShardInfo:
    index: int
    count: int  # requests in the shard
    first_line: int  # input line number of its first request
    reused: int = 0  # of them answered from an earlier job (prepare wrote them as a checkpoint part)

    @property
    def needs_engine(self) -> bool:
        return self.reused < self.count


@dataclass(frozen=True)
class Manifest:
    job_id: str
    model: str
    total: int
    shards: list[ShardInfo]
    tenant: str = DEFAULT_TENANT
    # What the job ran on (batchsvc/inference/provenance.py).
    reproducibility: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = orjson.loads(data)
        shards = [ShardInfo(**s) for s in raw["shards"]]
        return cls(
            raw["job_id"],
            raw["model"],
            raw["total"],
            shards,
            raw.get("tenant", DEFAULT_TENANT),
            raw.get("reproducibility"),
        )

    def save(self, storage: Storage) -> None:
        storage.put_bytes(layout.manifest_key(self), self.to_json(), content_type="application/json")

    @classmethod
    def load(cls, storage: Storage, job: layout.JobRef) -> Manifest:
        return cls.from_json(storage.get_bytes(layout.manifest_key(job)))


@dataclass(frozen=True)
class ShardSummary:
    """What a finished shard wrote; also the small pointer a shard task returns."""

    job_id: str
    index: int
    output_key: str
    count: int
    succeeded: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    latency_sum: float  # seconds, over requests this run's engine answered
    latency_count: int  # how many those are: a resumed shard's checkpointed lines have no latency
    sha256: str  # of the shard output object
    tenant: str = DEFAULT_TENANT
    cached_tokens: int = 0
    reused: int = 0  # lines answered from an earlier job (never sent to the engine)
    engine_requests: int = 0  # requests the finishing run sent to the engine
    engine_seconds: float = 0.0  # how long that run held the engine: the job's GPU time
    # Answer quality (batchsvc/inference/quality.py): structured answers checked
    # against their schema, those valid, and the answer field's values.
    schema_checked: int = 0
    schema_valid: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def load(cls, storage: Storage, job: layout.JobRef, index: int) -> ShardSummary:
        return cls(**orjson.loads(storage.get_bytes(layout.shard_summary_key(job, index))))

    def save_if_absent(self, storage: Storage) -> bool:
        """Write the summary unless one exists (If-None-Match on S3, an atomic
        link locally); True if this one is now the shard's."""
        key = layout.shard_summary_key(self, self.index)
        return storage.put_bytes_if_absent(key, orjson.dumps(asdict(self)), "application/json")
