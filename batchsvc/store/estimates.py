"""Dry-run estimates in Redis: one JSON value per estimate, with a TTL.

    {p}:estimate:{id}   the estimate (tenant, status queued|done|invalid, figures)

An estimate is the only thing a dry run keeps, and only until its TTL (or its
caller deletes it): no job record, no index entry, no stored input."""

from __future__ import annotations

import secrets
from typing import Any

import orjson


class EstimateNotFound(LookupError):
    pass


def new_estimate_id() -> str:
    return "est_" + secrets.token_hex(16)


class EstimateStore:
    def __init__(self, client: Any, prefix: str = "batchsvc"):
        self.redis = client
        self.prefix = prefix

    def _key(self, estimate_id: str) -> str:
        return f"{self.prefix}:estimate:{estimate_id}"

    def save(self, estimate_id: str, body: dict[str, Any], ttl_s: int) -> None:
        self.redis.set(self._key(estimate_id), orjson.dumps(body), ex=ttl_s)

    def get(self, estimate_id: str) -> dict[str, Any]:
        raw = self.redis.get(self._key(estimate_id))
        if raw is None:
            raise EstimateNotFound(estimate_id)
        return orjson.loads(raw)

    def delete(self, estimate_id: str) -> bool:
        return bool(self.redis.delete(self._key(estimate_id)))
