"""The one Celery app, built from the same `Settings` as the Flask app."""

from __future__ import annotations

from celery import Celery

from batchsvc.settings import Settings, get_settings

# Task names are the public contract: routes, beat, Flower and the web app refer to them.
PREPARE = "batch.prepare"
SHARD = "batch.shard"
FINALIZE = "batch.finalize"
WEBHOOK = "batch.webhook"
RESCORE = "batch.rescore"
SWEEP = "batch.sweep"
REDRIVE = "batch.redrive"
RETENTION = "batch.retention"


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


def create_celery(settings: Settings) -> Celery:
    app = Celery("batchsvc", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.cpu_queue,
        # A task is acknowledged when it ends, and given back if its worker dies,
        # so a killed worker's shard runs again elsewhere.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_expires=settings.result_expires_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker outage pauses workers; it never kills them
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        enable_utc=True,
        imports=["tasks.batch"],
    )
    return app


app = create_celery(get_settings())
