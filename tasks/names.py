"""Task names, queue names and priorities: what the web app, beat, Flower and the
workers agree on. Importing this builds no Celery app."""

from __future__ import annotations

from batchsvc.settings import Settings

# Task names are the public contract: routes, beat, Flower and the web app refer to them.
PREPARE = "batch.prepare"
SHARD = "batch.shard"
FINALIZE = "batch.finalize"
WEBHOOK = "batch.webhook"
RESCORE = "batch.rescore"
SWEEP = "batch.sweep"
REDRIVE = "batch.redrive"
RETENTION = "batch.retention"
ESTIMATE = "batch.estimate"
# The remote-control command that moves an LLM worker to another model (tasks/fleet.py).
SWAP_MODEL = "swap_model"
LEASES = "batch.leases"
BACKUP = "batch.backup"


def llm_queue(settings: Settings, model: str) -> str:
    """Shards of a model go to that model's queue; a GPU worker consumes the
    queues of the models it serves, so a host only ever loads its own models."""
    return f"{settings.llm_queue_prefix}.{model}"


# Redis has no native priorities: kombu keeps one list per step and serves the
# lowest number first. Users speak "higher runs sooner" (0-9); see celery_priority.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"


def celery_priority(user_priority: int) -> int:
    return 9 - max(0, min(9, user_priority))


def queue_keys(queue: str) -> list[str]:
    """The broker's Redis lists that hold one queue's messages, one per priority."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS[1:]]
