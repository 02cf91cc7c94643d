"""Worker entry point: `celery -A tasks.worker worker ...` (also beat and flower).

LLM workers set BATCHSVC_PRELOAD_MODEL to load their model as the worker
starts, so the first shard finds the engine warm (tasks/fleet.py)."""

from __future__ import annotations

import logging

from celery import signals

from batchsvc.inference.models import ModelCatalog, ModelConfigError
from batchsvc.settings import get_settings
from batchsvc.telemetry import init_sentry
from tasks import fleet as _fleet  # noqa: F401  (LLM worker records, model preload, hot-swap)
from tasks.batch import app  # importing tasks.batch registers the tasks
from tasks.schedule import beat_schedule

log = logging.getLogger(__name__)

app.conf.beat_schedule = beat_schedule(get_settings())
try:  # a bad models.yaml entry stops the worker before it takes any task
    ModelCatalog.from_settings(get_settings())
except ModelConfigError as exc:
    raise SystemExit(f"batchsvc worker: {exc}") from None


@signals.worker_init.connect
def _init(**_: object) -> None:
    init_sentry(get_settings(), "worker")


__all__ = ["app"]
