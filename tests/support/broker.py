"""A look inside the Redis broker (kombu's keys), for tests that duplicate a
message or wait for a dead worker's message to become redeliverable."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from batchsvc.settings import Settings
from tasks.names import queue_keys

# kombu's Redis transport keeps delivered-but-unacknowledged messages here, scored
# by delivery time; a consumer puts them back once they are visibility_timeout old.
UNACKED_INDEX = "unacked_index"


def broker(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url)


@dataclass(frozen=True)
class QueuedMessage:
    key: str  # the Redis list holding it (one per queue and priority)
    raw: bytes
    task: str
    args: list[Any]

    @property
    def task_id(self) -> str:
        return str(orjson.loads(self.raw)["headers"]["id"])


def queued(settings: Settings, queue: str) -> list[QueuedMessage]:
    """The messages waiting in a queue, next to be consumed first."""
    client = broker(settings)
    found = []
    for key in queue_keys(queue):
        # kombu publishes with LPUSH and consumes with BRPOP: the right end goes first.
        for raw in reversed(client.lrange(key, 0, -1)):
            message = orjson.loads(raw)
            args = orjson.loads(base64.b64decode(message["body"]))[0]
            found.append(QueuedMessage(key, raw, message["headers"]["task"], args))
    return found


def deliver_again(settings: Settings, message: QueuedMessage) -> None:
    """Put a copy of a waiting message at the consuming end of its queue: the same
    task id, chord and all, as a broker redelivery would."""
    broker(settings).rpush(message.key, message.raw)


def unacked_ages(settings: Settings) -> list[float]:
    """Seconds since each unacknowledged message was delivered."""
    now = time.time()
    return [now - score for _, score in broker(settings).zrange(UNACKED_INDEX, 0, -1, withscores=True)]


def redeliverable(settings: Settings) -> bool:
    """No unacknowledged message is younger than the visibility timeout: a consumer
    that starts now puts every one of them back in its queue (kombu looks for
    them when a consumer starts, then only every ~100 s)."""
    return all(age > settings.visibility_timeout_s for age in unacked_ages(settings))
