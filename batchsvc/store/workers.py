"""What each LLM worker is doing now: its model, state, current shard and engine
load times, in Redis, so the API can list workers and the models they serve.

A worker writes its record when its state changes and again every
`heartbeat_s` from a thread of its own (a solo-pool worker's main thread is busy
for a whole shard). A record lives for `ttl_s` past its last write: a worker
that died drops out of the list by itself."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis


class WorkerState:
    STARTING = "starting"  # up, engine not loaded yet
    LOADING = "loading"  # loading an engine
    IDLE = "idle"  # engine warm, waiting for a shard
    BUSY = "busy"  # running a shard
    SWAPPING = "swapping"  # asked to move to another model; does so after its current shard


@dataclass
class WorkerRecord:
    name: str  # the Celery node name, e.g. llm-gpu0@host
    queues: list[str] = field(default_factory=list)
    model: str | None = None  # the alias the engine has loaded (or is loading)
    state: str = WorkerState.STARTING
    current_shard: str | None = None  # "job_id/index"
    devices: str | None = None  # CUDA_VISIBLE_DEVICES of the process
    pid: int | None = None
    engine_loaded_at: float | None = None
    engine_load_s: float | None = None
    swap_to: str | None = None  # the model a pending swap will load
    last_swap: dict[str, Any] | None = None  # seconds each step of the latest swap took
    shards_run: int = 0
    seen_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class WorkerStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float = 60.0):
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def _history_key(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}:shards"

    def _index(self) -> str:
        return f"{self.prefix}:workers"

    def save(self, record: WorkerRecord) -> WorkerRecord:
        record.seen_at = time.time()
        pipe = self.redis.pipeline()
        pipe.set(self._key(record.name), orjson.dumps(record.public()), px=int(self.ttl_s * 1000))
        pipe.sadd(self._index(), record.name)
        pipe.execute()
        return record

    def _load(self, name: str, raw: bytes | str) -> WorkerRecord:
        record = WorkerRecord(**orjson.loads(raw))
        if (swap := self.pending_swap(name)) is not None:
            record.swap_to = swap["model"]
            if record.state == WorkerState.IDLE or record.state == WorkerState.BUSY:
                record.state = WorkerState.SWAPPING
        return record

    def get(self, name: str) -> WorkerRecord | None:
        raw = self.redis.get(self._key(name))
        return self._load(name, raw) if raw else None

    def live(self) -> list[WorkerRecord]:
        """Live workers, by name; names whose record expired leave the index."""
        names = sorted(_text(n) for n in self.redis.smembers(self._index()))
        records = []
        for name, raw in zip(names, self.redis.mget([self._key(n) for n in names]) if names else [], strict=True):
            if raw is None:
                self.redis.srem(self._index(), name)
            else:
                records.append(self._load(name, raw))
        return records

    def remove(self, name: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._key(name), self._swap_key(name))
        pipe.srem(self._index(), name)
        pipe.execute()

    def _swap_key(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}:swap"

    def request_swap(self, name: str, model: str, requested_at: float) -> None:
        """Note that `name` was asked to move to `model` (the worker does it after its
        current shard, and clears this); kept apart from the record the worker rewrites."""
        self.redis.set(self._swap_key(name), orjson.dumps({"model": model, "requested_at": requested_at}), ex=86400)

    def pending_swap(self, name: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._swap_key(name))
        return orjson.loads(raw) if raw else None

    def clear_swap(self, name: str) -> None:
        self.redis.delete(self._swap_key(name))

    def record_shard(self, name: str, shard: str, model: str, ended_at: float, keep: int = 1000) -> None:
        """Add to the worker's history of shards run (newest first, `keep` of them)."""
        pipe = self.redis.pipeline()
        pipe.lpush(self._history_key(name), f"{shard} {model} {ended_at:.3f}")
        pipe.ltrim(self._history_key(name), 0, keep - 1)
        pipe.expire(self._history_key(name), 7 * 86400)
        pipe.execute()

    def shards_of(self, name: str) -> list[tuple[str, str, float]]:
        """(shard "job_id/index", model, ended_at) the worker ran, oldest first."""
        entries = [_text(e).split(" ") for e in self.redis.lrange(self._history_key(name), 0, -1)]
        return [(shard, model, float(ended)) for shard, model, ended in reversed(entries)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def live_models(records: list[WorkerRecord]) -> dict[str, list[str]]:
    """alias -> names of live workers whose engine serves it now."""
    serving: dict[str, list[str]] = {}
    for record in records:
        if record.model and record.state in (WorkerState.IDLE, WorkerState.BUSY, WorkerState.SWAPPING):
            serving.setdefault(record.model, []).append(record.name)
    return serving
