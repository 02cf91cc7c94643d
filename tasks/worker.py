"""Worker entry point: `celery -A tasks.worker worker ...` (also beat and flower).

LLM workers set BATCHSVC_PRELOAD_MODEL to load their model as the worker
starts, so the first shard finds the engine warm (tasks/fleet.py)."""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any

import redis
from celery import signals

from batchsvc import logs, metrics
from batchsvc.inference.engine import EngineVersionError, check_vllm_version, warm_engine_stats
from batchsvc.inference.models import EngineKind, ModelCatalog, ModelConfigError
from batchsvc.pipeline.monitoring import record_worker_start
from batchsvc.services import current_services
from batchsvc.settings import get_settings
from batchsvc.telemetry import init_sentry
from tasks import fleet as _fleet  # LLM worker records, model preload, hot-swap, the memory watch
from tasks.batch import app  # importing tasks.batch registers the tasks
from tasks.leasing import request_shutdown
from tasks.schedule import beat_schedule

log = logging.getLogger(__name__)

app.conf.beat_schedule = beat_schedule(get_settings())
try:  # a bad models.yaml entry, or the wrong vLLM on an LLM worker, stops it before any task
    preload = ModelCatalog.from_settings(get_settings()).get(os.environ.get("BATCHSVC_PRELOAD_MODEL", ""))
    if preload is not None and preload.engine == EngineKind.VLLM:
        check_vllm_version()
except (ModelConfigError, EngineVersionError) as exc:
    raise SystemExit(f"batchsvc worker: {exc}") from None


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    """Connected, so Celery leaves logging to us (worker, beat and flower alike)."""
    settings = get_settings()
    logs.configure_logging(settings.log_format, settings.log_level, "worker")


@signals.celeryd_init.connect
def _quiet(instance: Any = None, **_: object) -> None:
    """JSON logs start before Celery's checks warn, and without its text banner."""
    settings = get_settings()
    if settings.log_format == "json":
        logs.capture_stdio("worker")
        if instance is not None:
            instance.quiet = True
    logs.configure_logging(settings.log_format, settings.log_level, "worker")


@signals.worker_init.connect
def _init(**_: object) -> None:
    init_sentry(get_settings(), "worker")
    metrics.reset_multiprocess_dir()  # before the pool forks: last run's files must not add in


@signals.worker_ready.connect
def _observe(sender: Any = None, **_: object) -> None:
    settings = get_settings()
    name = getattr(sender, "hostname", None) or "worker"
    metrics.WORKER_START_TIME.labels(name).set(time.time())
    try:
        record_worker_start(current_services(), name)
    except redis.RedisError as exc:  # the worker still serves; the restart alert misses this start
        log.warning("could not count this worker's start: %s", exc)
    if settings.metrics_port:
        metrics.start_worker_exporter(
            settings.metrics_port,
            settings.metrics_host,
            metrics.SystemCollector([str(settings.path("var"))]),
            metrics.GPUCollector.shared(),
            metrics.EngineStatsCollector(warm_engine_stats),
            metrics.MemoryBudgetCollector(_memory_reading),
        )


def _memory_reading() -> tuple[float, int] | None:
    watch = _fleet.memory_watch()
    return (watch.last_mb, watch.budget_mb) if watch is not None and watch.last_mb else None


@signals.worker_process_shutdown.connect
def _child_exit(pid: int | None = None, **_: object) -> None:
    metrics.process_exited(pid or os.getpid())


@signals.task_prerun.connect
def _job_context(task: Any = None, args: Any = (), kwargs: Any = None, **_: object) -> None:
    """Lines a task writes name its job, shard and tenant."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except (TypeError, ValueError):
        return
    job_id, tenant = bound.get("job_id"), bound.get("tenant")
    if job_id and not tenant:
        try:
            tenant = current_services().jobs.get(job_id).tenant
        except Exception:  # the job is gone, or Redis is down: log without a tenant
            tenant = None
    logs.set_job_context(job_id=job_id, shard=bound.get("index"), tenant=tenant)


@signals.task_postrun.connect
def _end_job_context(**_: object) -> None:
    logs.reset_job_context()


@signals.worker_shutting_down.connect
def _shutting_down(**_: object) -> None:
    # Sent from the signal handler of SIGTERM/SIGINT/SIGQUIT in the main process,
    # which (with --pool solo) is where a shard runs: it notices at its next result.
    request_shutdown()


__all__ = ["app"]
