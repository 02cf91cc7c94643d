"""Idempotency keys of submissions, in Redis.

A client that sends `Idempotency-Key` with a POST and retries it (its answer was
lost, it timed out) must get the first answer again, not a second job. One
record per (tenant, route, key) holds the request's fingerprint and, once the
first request has answered, its status and body, for `ttl_s` (24 h).

Keys (under the store's prefix):
    idem:<tenant>:<route>:<sha256 of the key>   hash: fingerprint, state, status, body, created_at
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import redis

# Claim a key for a first request, or say what holds it. Returns
# {"claimed"} or {state, fingerprint, status, body}.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], 'state', 'pending', 'fingerprint', ARGV[1], 'created_at', ARGV[2])
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return {'claimed'}
end
return redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'status', 'body')
"""

# Only the request that claimed the key (same fingerprint, still pending) completes it.
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' or redis.call('HGET', KEYS[1], 'fingerprint') ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'body', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'pending' and redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """What a request found under its key: nothing (it is first: `claimed`), the
    first request still running (`pending`), or its stored answer (`done`)."""

    state: str  # "claimed", "pending" or "done"
    fingerprint: str = ""
    status: int = 0
    body: bytes = b""


class IdempotencyStore:
    def __init__(self, client: redis.Redis, prefix: str = "batchsvc", ttl_s: int = 24 * 3600, pending_ttl_s: int = 900):
        self.redis: Any = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        # A first request that never answered (its process died) frees its key after this.
        self.pending_ttl_s = pending_ttl_s
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    def _key(self, tenant: str, route: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:idem:{tenant}:{route}:{digest}"

    def claim(self, tenant: str, route: str, key: str, fingerprint: str) -> Claim:
        reply = self._claim(keys=[self._key(tenant, route, key)], args=[fingerprint, time.time(), self.pending_ttl_s])
        if reply == [b"claimed"]:
            return Claim("claimed", fingerprint)
        state, found, status, body = reply
        return Claim(state.decode(), found.decode(), int(status or 0), body or b"")

    def complete(self, tenant: str, route: str, key: str, fingerprint: str, status: int, body: bytes) -> bool:
        keys = [self._key(tenant, route, key)]
        return bool(self._complete(keys=keys, args=[fingerprint, status, body, self.ttl_s]))

    def release(self, tenant: str, route: str, key: str, fingerprint: str) -> None:
        """Forget a first request that failed, so that its retry runs afresh."""
        self._release(keys=[self._key(tenant, route, key)], args=[fingerprint])
