"""Job state in Redis: one hash per job, per-shard progress, and a time index.

Keys (all under the settings' `redis_prefix`):
    {p}:job:{id}           hash, one JSON-encoded value per field of `Job`
    {p}:job:{id}:progress  hash, "{shard}:{counter}" -> absolute count for that shard
    {p}:job:{id}:attempts  hash, shard -> starts counted against shard_max_attempts
    {p}:job:{id}:memory    hash, shard -> MemoryExits as JSON (the worker memory budget)
    {p}:job:{id}:compile_s seconds its shards spent compiling grammars (grammar_job_budget_s)
    {p}:jobs               sorted set, job id scored by created_at (listing, newest first)
    {p}:active             set of the jobs not yet in a terminal status
    {p}:t:{tenant}:jobs    the same index, and the same set as
    {p}:t:{tenant}:active  `active`, for one tenant
    {p}:model_rate:{alias} last measured requests/s for a model (estimates)

Progress is written as absolute per-shard numbers (HSET, not HINCRBY) so a
re-run of a shard overwrites its own figures instead of counting twice.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import orjson
import redis

from batchsvc import metrics
from batchsvc.access import DEFAULT_TENANT
from batchsvc.errors import JobNotFound
from batchsvc.store.paging import PagedIndex, newest_first


class JobStatus(StrEnum):
    QUEUED = "queued"
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
ACTIVE = frozenset(set(JobStatus) - TERMINAL)


def job_error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """A job-level error, in the same shape as a line error (line is None)."""
    return {"line": None, "code": code, "message": message, "param": param}


# The seed API's words for priority, on the same 0-9 scale as the numbers
# (higher runs sooner). A job keeps the form its client sent; only scheduling
# reads the number.
PRIORITY_WORDS = {"high": 8, "normal": 5, "low": 2}
DEFAULT_PRIORITY = PRIORITY_WORDS["normal"]


def parse_priority(value: Any) -> int | None:
    """0-9 for a word of PRIORITY_WORDS or an integer 0-9 (OpenAI metadata sends
    digits as strings); None for anything else."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in PRIORITY_WORDS:
            return PRIORITY_WORDS[word]
        value = int(word) if word.isdigit() else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        return value
    return None


def job_priority(metadata: dict[str, Any]) -> int:
    """A job's priority, 0-9 (higher runs sooner), default "normal" (5);
    anything unreadable counts as the default."""
    parsed = parse_priority(metadata.get("priority", DEFAULT_PRIORITY))
    return DEFAULT_PRIORITY if parsed is None else parsed


def new_job_id() -> str:
    # 128 random bits: ids are unguessable, and double as OpenAI-style batch ids.
    return "batch_" + secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    """Whether `value` has the shape new_job_id gives (before it is used in a storage key)."""
    return _JOB_ID.fullmatch(value) is not None


_JOB_ID = re.compile(r"batch_[0-9a-f]{32}")


@dataclass
class Job:
    id: str
    model: str
    tenant: str = DEFAULT_TENANT  # whose job: only that tenant's keys (and admins) see it
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    # The one url every line must use (OpenAI /v1/batches); None admits any supported url.
    endpoint: str | None = None
    input_key: str | None = None  # object key of the stored input file
    input_file_id: str | None = None  # when submitted through /v1/batches
    input_url: str | None = None  # set while the input still has to be fetched
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    validating_at: float | None = None
    started_at: float | None = None  # the first shard began running
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    cancelling_at: float | None = None
    finished_at: float | None = None  # when it reached its terminal status
    completion_window: str | None = None  # e.g. "24h"
    expires_at: float | None = None  # unanswered requests expire then; finished ones are kept
    total: int | None = None  # request lines, known after validation (or at upload)
    # Lines the input held at submit, where that is known (an upload, a Files API file):
    # what the job counts against its tenant's queued-request quota until `total` is known.
    submitted_lines: int | None = None
    shard_count: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # first N validation/job errors
    error_count: int = 0
    stats: dict[str, Any] | None = None
    results_key: str | None = None
    errors_key: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    estimated_completion: float | None = None
    webhook_status: str | None = None  # pending, delivered, failed
    last_progress_at: float | None = None  # a shard checkpointed, or the job was re-driven
    data_expired_at: float | None = None  # retention deleted its objects
    reuse_from: list[str] | None = None  # jobs whose answers it may reuse (batchsvc/pipeline/reuse.py)
    reproducibility: dict[str, Any] | None = None  # what it ran on (batchsvc/inference/provenance.py)

    @property
    def job_id(self) -> str:
        """The name `layout` reads (a Job, a Manifest and a ShardSummary all name their job so)."""
        return self.id

    @property
    def last_activity(self) -> float:
        moments = (self.created_at, self.validating_at, self.in_progress_at, self.finalizing_at, self.last_progress_at)
        return max(m for m in moments if m is not None)

    def to_fields(self) -> dict[str, bytes]:
        # None is stored as an absent field, so HSETNX can fill it in exactly once.
        return {
            f.name: orjson.dumps(_plain(getattr(self, f.name)))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def to_json(self) -> bytes:
        return orjson.dumps({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)})

    @classmethod
    def from_json(cls, data: bytes) -> Job:
        return cls.from_fields({k.encode(): orjson.dumps(v) for k, v in orjson.loads(data).items() if v is not None})

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in names}
        values["status"] = JobStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True)
class Counts:
    completed: int = 0  # requests answered with a 200 response
    failed: int = 0  # requests that ended in an error line
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed


_COUNTERS = ("completed", "failed", "prompt_tokens", "completion_tokens")


@dataclass(frozen=True)
class MemoryExits:
    """What a shard's runs learnt from workers that went over their memory budget
    (batchsvc/inference/memory_budget.py), narrowing down to the request that did it:
    the requests in flight then (`suspects`, run next in small groups), those in
    flight when a worker went over while their group ran (`alone`, run one at a
    time next), and those in flight alone then (`culprits`, which fail)."""

    suspects: tuple[str, ...] = ()
    alone: tuple[str, ...] = ()
    culprits: dict[str, float] = field(default_factory=dict)  # custom_id -> the worker's RSS (MB) then
    budget_mb: int = 0  # the budget the last exit went over
    exits: int = 0

    def after_exit(self, in_flight: list[str], unit: list[str] | None, rss_mb: float, budget_mb: int) -> MemoryExits:
        """This record once a worker went over `budget_mb` with `in_flight` unanswered
        while it ran `unit` (a group of suspects, or one alone), or, with None, the
        shard's other requests."""
        if unit is not None and len(unit) == 1 and unit[0] in in_flight:
            (culprit,) = unit
            return MemoryExits(
                tuple(c for c in self.suspects if c != culprit),
                tuple(c for c in self.alone if c != culprit),
                {**self.culprits, culprit: round(rss_mb, 1)},
                budget_mb,
                self.exits + 1,
            )
        held = [c for c in dict.fromkeys(in_flight) if c not in self.culprits]
        if unit is not None:
            caught = [c for c in held if c in unit]
            suspects = tuple(c for c in self.suspects if c not in caught)
            alone = self.alone + tuple(c for c in caught if c not in self.alone)
        else:
            suspects = self.suspects + tuple(c for c in held if c not in self.suspects and c not in self.alone)
            alone = self.alone
        return MemoryExits(suspects, alone, self.culprits, budget_mb, self.exits + 1)

    def narrows(self, before: MemoryExits) -> bool:
        """True when this record knows more than `before`: a culprit, requests to
        run alone, or requests not suspected yet. An exit that teaches nothing
        counts as a crash."""
        if len(self.culprits) > len(before.culprits) or not set(self.alone) <= set(before.alone):
            return True
        return not set(self.suspects) <= set(before.suspects) | set(before.alone)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> MemoryExits:
        raw = orjson.loads(data)
        return cls(
            tuple(raw["suspects"]),
            tuple(raw.get("alone", ())),
            dict(raw["culprits"]),
            int(raw["budget_mb"]),
            int(raw["exits"]),
        )


# Compare-and-set on the status field, so two workers can never move a job
# backwards (e.g. a late shard un-finishing a completed job).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
local allowed = cjson.decode(ARGV[1])
local ok = false
for _, s in ipairs(allowed) do if s == cur then ok = true end end
if not ok then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Create a job unless its tenant already has `max` active ones (0: no limit),
# so two submissions racing each other cannot both take the last place.
_CREATE = """
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
local max = tonumber(ARGV[1])
if max > 0 and redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 0 and redis.call('SCARD', KEYS[4]) >= max then
    return 0
end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
if ARGV[4] == '1' then
    redis.call('SADD', KEYS[4], ARGV[2])
    redis.call('SADD', KEYS[5], ARGV[2])
end
return 1
"""

# HSETNX, but only on a job that exists: alone it would create a hash with no status.
_SET_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


# The one retry job of a finished job's failed requests: keep the recorded one
# while it is being created (no record yet) or still runs; otherwise record ours,
# for `pending_ms` until the caller confirms it (a caller that died lets it lapse).
_CLAIM_FOLLOW_UP = """
local current = redis.call('GET', KEYS[1])
if current then
    local status = redis.call('HGET', ARGV[3] .. current, 'status')
    if not status then return {current, 0} end
    if not (status == '"completed"' or status == '"failed"' or status == '"cancelled"' or status == '"expired"') then
        return {current, 0}
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], 1}
"""

# Forget a claim, only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class JobExists(Exception):
    """A job with this (deterministic) id was created before."""


class ActiveLimitReached(Exception):
    def __init__(self, tenant: str, limit: int):
        super().__init__(f"tenant {tenant!r} already has {limit} active jobs")
        self.tenant = tenant
        self.limit = limit


class JobStore(PagedIndex[Job]):
    def __init__(self, client: redis.Redis, prefix: str = "batchsvc"):
        # redis-py's stubs type replies as bytes | str | list...; we always use bytes.
        self.redis: Any = client
        self.prefix = prefix
        self._transition = client.register_script(_TRANSITION)
        self._set_once = client.register_script(_SET_ONCE)
        self._create = client.register_script(_CREATE)
        self._claim_follow_up = client.register_script(_CLAIM_FOLLOW_UP)
        self._release = client.register_script(_RELEASE)

    # --- keys ---
    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _progress_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:progress"

    def _index_key(self, tenant: str | None = None) -> str:
        return f"{self.prefix}:jobs" if tenant is None else f"{self.prefix}:t:{tenant}:jobs"

    def _active_key(self, tenant: str | None = None) -> str:
        return f"{self.prefix}:active" if tenant is None else f"{self.prefix}:t:{tenant}:active"

    # --- jobs ---
    def create(self, job: Job, *, max_active: int = 0, if_absent: bool = False) -> Job:
        """Store a new (or rebuilt) job. Raises ActiveLimitReached, storing nothing,
        when its tenant already has `max_active` active jobs (0: no limit), and
        with `if_absent`, JobExists when a job of this id exists."""
        args: list[Any] = [max_active, job.id, job.created_at, "0" if job.status.terminal else "1"]
        args.append("1" if if_absent else "0")
        for name, value in job.to_fields().items():
            args += [name, value]
        keys = [self._key(job.id), self._index_key(), self._index_key(job.tenant)]
        keys += [self._active_key(job.tenant), self._active_key()]
        created = self._create(keys=keys, args=args)
        if created == 2:
            raise JobExists(job.id)
        if not created:
            raise ActiveLimitReached(job.tenant, max_active)
        return job

    def find(self, job_id: str) -> Job | None:
        """The record, or None when there is none."""
        raw = self.redis.hgetall(self._key(job_id))
        return Job.from_fields(raw) if raw else None

    def get(self, job_id: str) -> Job:
        record = self.find(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self._key(job_id)))

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {name: orjson.dumps(_plain(value)) for name, value in fields.items() if value is not None}
        cleared = [name for name, value in fields.items() if value is None]
        pipe = self.redis.pipeline()
        if mapping:
            pipe.hset(self._key(job_id), mapping=mapping)
        if cleared:
            pipe.hdel(self._key(job_id), *cleared)
        pipe.execute()

    def transition(
        self, job_id: str, to: JobStatus, *, expect: frozenset[JobStatus] | set[JobStatus], **fields: Any
    ) -> bool:
        """Move a job to `to` if its status is one of `expect`; also set `fields`. True if moved."""
        args: list[Any] = [orjson.dumps([orjson.dumps(s.value).decode() for s in expect])]
        fields["status"] = to
        for name, value in fields.items():
            args += [name, orjson.dumps(_plain(value))]
        result = self._transition(keys=[self._key(job_id)], args=args)
        if result == -1:
            raise JobNotFound(job_id)
        if result and to.terminal:
            raw_tenant, raw_model = self.redis.hmget(self._key(job_id), ["tenant", "model"])
            tenant = orjson.loads(raw_tenant or orjson.dumps(DEFAULT_TENANT))
            metrics.job_finished(to.value, orjson.loads(raw_model or b'""'), tenant)
            pipe = self.redis.pipeline()
            pipe.srem(self._active_key(), job_id)
            pipe.srem(self._active_key(tenant), job_id)
            pipe.execute()
        return bool(result)

    def active_ids(self, tenant: str | None = None) -> list[str]:
        """Jobs not yet in a terminal status (what the sweeper looks at), of one tenant or all."""
        return sorted(i.decode() for i in self.redis.smembers(self._active_key(tenant)))

    def active_jobs(self, tenant: str) -> list[Job]:
        """A tenant's active jobs. An id whose record has gone (or ended without the
        set hearing of it) is dropped from the set here, so it cannot hold a quota."""
        found = []
        for job_id in self.active_ids(tenant):
            try:
                job = self.get(job_id)
            except JobNotFound:
                job = None
            if job is None or job.status.terminal:
                self.redis.srem(self._active_key(tenant), job_id)
                continue
            found.append(job)
        return found

    def fail(
        self, job_id: str, errors: list[dict[str, Any]], error_count: int | None = None, *, expect: frozenset = ACTIVE
    ) -> bool:
        """End a job as failed with the errors that explain why."""
        return self.transition(
            job_id,
            JobStatus.FAILED,
            expect=expect,
            errors=errors,
            error_count=len(errors) if error_count is None else error_count,
            finished_at=time.time(),
            estimated_completion=None,
        )

    def list_ids(self, *, limit: int = 20, after: str | None = None, tenant: str | None = None) -> list[str]:
        """Job ids, newest first, of one tenant or all; `after` is the last id of
        the previous page."""
        ids = newest_first(self.redis, self._index_key(tenant), limit=limit, after=after)
        if ids is None:
            raise JobNotFound(after or "")
        return ids

    def ids_created_before(self, cutoff: float) -> list[str]:
        """Every job id created at or before `cutoff`, oldest first."""
        return [raw.decode() for raw in self.redis.zrangebyscore(self._index_key(), "-inf", cutoff)]

    def count(self) -> int:
        """How many jobs the index holds, of every tenant."""
        return int(self.redis.zcard(self._index_key()))

    # --- progress ---
    def record_shard_progress(self, job_id: str, shard: int, counts: Counts) -> None:
        mapping = {f"{shard}:{name}": getattr(counts, name) for name in _COUNTERS}
        pipe = self.redis.pipeline()
        pipe.hset(self._progress_key(job_id), mapping=mapping)
        pipe.hset(self._key(job_id), "last_progress_at", orjson.dumps(time.time()))
        pipe.execute()

    def shard_attempt(self, job_id: str, shard: int, delta: int = 1) -> int:
        """Count a start of a shard (delta=1), or take back one that did not count
        (delta=-1). Redeliveries after a worker died count too: Celery's own retry
        counter does not see those."""
        return int(self.redis.hincrby(f"{self._key(job_id)}:attempts", str(shard), delta))

    def memory_exits(self, job_id: str, shard: int) -> MemoryExits:
        """What workers that went over their memory budget left about this shard."""
        raw = self.redis.hget(f"{self._key(job_id)}:memory", str(shard))
        return MemoryExits.from_json(raw) if raw else MemoryExits()

    def record_memory_exit(self, job_id: str, shard: int, exits: MemoryExits, *, refund: bool) -> None:
        """Keep `exits` for the shard's next start; with `refund`, the start that is
        ending does not count against shard_max_attempts (one request's memory is not
        the shard's fault)."""
        pipe = self.redis.pipeline()
        pipe.hset(f"{self._key(job_id)}:memory", str(shard), exits.to_json())
        if refund:
            pipe.hincrby(f"{self._key(job_id)}:attempts", str(shard), -1)
        pipe.execute()

    def add_compile_seconds(self, job_id: str, seconds: float) -> float:
        """Add `seconds` to what the job's shards spent compiling grammars, on any
        worker, and return the new total (`seconds` 0 reads it)."""
        if not seconds:
            return float(self.redis.get(f"{self._key(job_id)}:compile_s") or 0)
        return float(self.redis.incrbyfloat(f"{self._key(job_id)}:compile_s", seconds))

    def shards_started(self, job_id: str) -> int:
        """How many of a job's shards some worker has begun (the rest wait in a queue)."""
        return int(self.redis.hlen(f"{self._key(job_id)}:attempts"))

    def counts(self, job_id: str) -> Counts:
        totals = dict.fromkeys(_COUNTERS, 0)
        for key, value in self.redis.hgetall(self._progress_key(job_id)).items():
            name = key.decode().split(":", 1)[1]
            if name in totals:
                totals[name] += int(value)
        return Counts(**totals)

    def set_once(self, job_id: str, name: str, value: Any) -> bool:
        """Set a field that is still unset; True for the one caller that set it."""
        return bool(self._set_once(keys=[self._key(job_id)], args=[name, orjson.dumps(_plain(value))]))

    def mark_started(self, job_id: str, when: float) -> None:
        """Record when the first shard began; later shards leave it alone."""
        self.set_once(job_id, "started_at", when)

    # --- operator actions, once each ---
    def claim_retry(self, job_id: str, candidate: str, pending_s: float = 60) -> tuple[str, bool]:
        """The id of the job retrying `job_id`'s failed requests, and whether the
        caller must create it (as `candidate`): True for exactly one caller at a
        time, until that job ends. Confirm with confirm_retry once it exists."""
        key = f"{self._key(job_id)}:retry_job"
        found, mine = self._claim_follow_up(keys=[key], args=[candidate, int(pending_s * 1000), f"{self.prefix}:job:"])
        return found.decode(), bool(mine)

    def confirm_retry(self, job_id: str) -> None:
        self.redis.persist(f"{self._key(job_id)}:retry_job")

    def release_retry(self, job_id: str, candidate: str) -> None:
        """Give up a claim whose job could not be created (a quota, an outage)."""
        self._release(keys=[f"{self._key(job_id)}:retry_job"], args=[candidate])

    def claim_redrive(self, job_id: str, hold_s: float) -> bool:
        """True for one caller per `hold_s`: a re-drive is given that long to show
        progress before another may send the same work again."""
        return bool(self.redis.set(f"{self._key(job_id)}:redrive", b"1", nx=True, px=int(hold_s * 1000)))

    # --- estimates ---
    def model_rate(self, alias: str) -> float | None:
        raw = self.redis.get(f"{self.prefix}:model_rate:{alias}")
        return float(raw) if raw else None

    def record_model_rate(self, alias: str, req_per_sec: float) -> None:
        self.redis.set(f"{self.prefix}:model_rate:{alias}", repr(req_per_sec))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
