"""Leases of running pipeline steps, in Redis.

A step that runs for long (a shard, a finalize) holds a lease naming its worker
and its run, and renews it every few seconds. A lease that is not renewed in
time means the run is gone (killed, its host lost) or frozen (SIGSTOP, a hung
process): the broker cannot tell, because its visibility timeout must outlast
the longest shard. The lease checker claims expired leases and sends their step
again at once, using the message the lease recorded.

Keys (under the store's prefix):
    lease:<subject>   hash: run, worker, host, pid, pid_start, message, acquired_at, renewed_at
    leases            sorted set: subject -> deadline (epoch seconds)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

# Renew only a lease this run still holds: after the checker claimed it, a late
# (zombie) run must not bring it back.
_RENEW = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'renewed_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

# Release only our own lease: a re-driven run may hold the subject by now.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# Claim one expired lease: whoever removes it from the index owns the re-drive,
# so two checkers never send the same step twice.
_CLAIM = """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[2], ARGV[1])
local record = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return record
"""


@dataclass(frozen=True)
class Lease:
    subject: str  # what runs: "shard:<job>:<index>", "finalize:<job>"
    run: str  # this run's id; a redelivery gets a new one
    worker: str  # the Celery node name
    host: str
    pid: int
    pid_start: int  # the process's start time in clock ticks (/proc/PID/stat), so a reused pid is never taken for it
    message: str  # the step's Celery signature as JSON: what the checker sends again
    acquired_at: float
    renewed_at: float

    def to_fields(self) -> dict[str, Any]:
        return {name: str(getattr(self, name)) for name in self.__dataclass_fields__ if name != "subject"}

    @classmethod
    def from_fields(cls, subject: str, raw: dict[bytes, bytes]) -> Lease:
        values = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            subject=subject,
            run=values["run"],
            worker=values["worker"],
            host=values["host"],
            pid=int(values["pid"]),
            pid_start=int(values["pid_start"]),
            message=values["message"],
            acquired_at=float(values["acquired_at"]),
            renewed_at=float(values["renewed_at"]),
        )


class LeaseStore:
    def __init__(self, client: redis.Redis, prefix: str = "batchsvc"):
        self.redis: Any = client
        self.prefix = prefix
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._claim = client.register_script(_CLAIM)

    def _key(self, subject: str) -> str:
        return f"{self.prefix}:lease:{subject}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:leases"

    def acquire(self, lease: Lease, ttl_s: float) -> None:
        """Take the subject for this run (a redelivery replaces an earlier holder)."""
        pipe = self.redis.pipeline()
        pipe.delete(self._key(lease.subject))
        pipe.hset(self._key(lease.subject), mapping=lease.to_fields())
        pipe.zadd(self._index, {lease.subject: lease.renewed_at + ttl_s})
        pipe.execute()

    def renew(self, subject: str, run: str, ttl_s: float) -> bool:
        """Push the deadline on; False when the run no longer holds the lease."""
        now = time.time()
        return bool(self._renew(keys=[self._key(subject), self._index], args=[run, now + ttl_s, now, subject]))

    def release(self, subject: str, run: str) -> bool:
        return bool(self._release(keys=[self._key(subject), self._index], args=[run, subject]))

    def get(self, subject: str) -> Lease | None:
        raw = self.redis.hgetall(self._key(subject))
        return Lease.from_fields(subject, raw) if raw else None

    def held(self) -> list[tuple[str, float]]:
        """Every lease's subject and deadline, soonest first."""
        return [(s.decode(), float(d)) for s, d in self.redis.zrange(self._index, 0, -1, withscores=True)]

    def claim_expired(self, now: float) -> list[Lease]:
        """Take every lease whose deadline passed; each is returned to one caller only."""
        claimed = []
        for raw_subject in self.redis.zrangebyscore(self._index, "-inf", now):
            subject = raw_subject.decode()
            record = self._claim(keys=[self._key(subject), self._index], args=[subject, now])
            if record:
                fields = dict(zip(record[::2], record[1::2], strict=True))
                claimed.append(Lease.from_fields(subject, fields))
        return claimed
