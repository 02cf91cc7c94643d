"""Health checks and Prometheus metrics, outside /v1."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from flask import Response, current_app
from marshmallow import Schema, fields
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from batchsvc import metrics
from batchsvc.access import Role
from batchsvc.pipeline.monitoring import JobStateCollector
from batchsvc.services import Services
from batchsvc.storage.base import StorageUnavailable
from batchsvc.store.workers import live_models
from tasks.names import llm_queue, queue_keys
from web.auth import requires
from web.openapi import Blueprint

health = Blueprint("health", __name__, description="Liveness, readiness and Prometheus metrics")

# A key no one writes: asking whether it exists is a round trip to the storage backend.
PROBE_KEY = "health/readiness-probe"


def _services() -> Services:
    return current_app.extensions["batchsvc"]


class LivenessSchema(Schema):
    status = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok", "unavailable"]})
    checks = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True)
    # Present when a check failed: why, per check.
    failed = fields.Dict(keys=fields.String(), values=fields.String())


@health.get("/healthz")
@health.response(200, LivenessSchema)
@health.doc(security=[])
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Nothing else is asked."""
    return {"status": "ok"}


class WorkerCheck:
    """Which of the configured models have a live LLM worker: one broadcast to
    the workers (only live ones answer), remembered for `cache_s` so that a
    load balancer's probes cost the workers nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._queues: set[str] = set()

    def live_queues(self, celery: Any, timeout: float, cache_s: float) -> set[str]:
        with self._lock:
            if time.monotonic() - self._at >= cache_s:
                replies = celery.control.inspect(timeout=timeout).active_queues() or {}
                self._queues = {q["name"] for queues in replies.values() for q in queues or ()}
                self._at = time.monotonic()
            return set(self._queues)


def _check_redis(svc: Services) -> str | None:
    try:
        svc.jobs.redis.ping()
    except redis.RedisError as exc:
        return f"redis: {type(exc).__name__}"
    return None


def _check_storage(svc: Services) -> str | None:
    try:
        svc.storage.exists(PROBE_KEY)
    except (StorageUnavailable, OSError) as exc:
        return f"storage: {type(exc).__name__}"
    return None


def _check_workers(svc: Services) -> str | None:
    settings = svc.settings
    models = [m.strip() for m in settings.worker_models.split(",") if m.strip()]
    if not models:
        return None
    check: WorkerCheck = current_app.extensions.setdefault("batchsvc.worker_check", WorkerCheck())
    queues = [llm_queue(settings, m) for m in models]
    try:
        live = check.live_queues(
            current_app.extensions["celery"], settings.readiness_timeout_s, settings.readiness_cache_s
        )
        # A solo-pool worker busy with a shard cannot answer the broadcast: its
        # record (tasks/fleet.py, kept fresh by a thread of its own) vouches for it.
        serving = live_models(svc.workers.live()) if not set(queues) <= live else {}
    except (redis.RedisError, OSError) as exc:
        return f"workers: the broker did not answer ({type(exc).__name__})"
    missing = [m for m, q in zip(models, queues, strict=True) if q not in live and m not in serving]
    return f"no live LLM worker for {', '.join(missing)}" if missing else None


@health.get("/readyz")
@health.response(200, ReadinessSchema)
@health.alt_response(503, schema=ReadinessSchema, description="a check failed: `failed` names it")
@health.doc(security=[])
def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: Redis, storage, and a live LLM worker for each model of
    BATCHSVC_WORKER_MODELS. 503 names the checks that failed."""
    svc = _services()
    checks = {"redis": _check_redis(svc), "storage": _check_storage(svc)}
    checks["workers"] = _check_workers(svc)
    failed = {name: why for name, why in checks.items() if why}
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": {n: n not in failed for n in checks}}
    if failed:
        body["failed"] = failed
    return body, 503 if failed else 200


def _queue_depths(svc: Services) -> dict[str, int]:
    broker = redis.Redis.from_url(svc.settings.broker_url, socket_timeout=5)
    try:
        queues = [svc.settings.cpu_queue] + [llm_queue(svc.settings, alias) for alias in svc.models.aliases()]
        return {queue: sum(broker.llen(key) for key in queue_keys(queue)) for queue in queues}
    finally:
        broker.close()


@health.get("/metrics")
@health.response(200, content_type=CONTENT_TYPE_LATEST, description="Prometheus text exposition")
@requires(Role.ADMIN)
def metrics_view() -> Response:
    """This API's own metrics (all its gunicorn workers', in multiprocess mode)
    and the job state read from Redis now. The job state spans every tenant, so
    only admin keys read it (Prometheus: `authorization: credentials`)."""
    svc = _services()
    body = metrics.exposition(
        JobStateCollector(svc, lambda: _queue_depths(svc)),
        metrics.SystemCollector([str(svc.settings.path("var"))]),
        metrics.GPUCollector.shared(),
    )
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
