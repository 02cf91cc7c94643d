"""How a Celery app is built from `Settings`: the workers' (tasks/batch.py) and the web app's (web/__init__.py)."""

from __future__ import annotations

from celery import Celery

from batchsvc.settings import Settings
from tasks.names import PRIORITY_SEP, PRIORITY_STEPS


def create_celery(settings: Settings) -> Celery:
    # Every task is a tasks.base.BatchTask: the options and retries they share are written there once.
    app = Celery(
        "batchsvc", broker=settings.broker_url, backend=settings.result_backend, task_cls="tasks.base:BatchTask"
    )
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
