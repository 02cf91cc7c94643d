"""A look inside the Redis broker (kombu's keys), for tests that look at waiting
messages or duplicate one."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from batchsvc.settings import Settings
from tasks.names import queue_keys


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
