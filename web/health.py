"""Health checks and Prometheus metrics, outside /v1."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from batchsvc.access import Role
from batchsvc.services import Services
from tasks.names import queue_keys
from web.auth import requires

health = Blueprint("health", __name__)


def _services() -> Services:
    return current_app.extensions["batchsvc"]


@health.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = _services()
    checks = {}
    try:
        checks["redis"] = bool(svc.jobs.redis.ping())
    except redis.RedisError:
        checks["redis"] = False
    ok = all(checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503


@health.get("/metrics")
@requires(Role.ADMIN)
def metrics() -> Response:
    """Queue depths read from the broker at scrape time, so every web process
    reports the same figures without shared in-process state. They span every
    tenant, so only admin keys read them (Prometheus: `authorization: credentials`)."""
    svc = _services()
    registry = CollectorRegistry()
    depth = Gauge("batchsvc_queue_depth", "Messages waiting in a Celery queue", ["queue"], registry=registry)
    broker = redis.Redis.from_url(svc.settings.broker_url, socket_timeout=5)
    try:
        queues = [svc.settings.cpu_queue]
        queues += [f"{svc.settings.llm_queue_prefix}.{alias}" for alias in svc.models.aliases()]
        for queue in queues:
            depth.labels(queue).set(sum(broker.llen(key) for key in queue_keys(queue)))
        jobs = Gauge("batchsvc_jobs_total", "Jobs known to the job store", registry=registry)
        jobs.set(svc.jobs.count())
    finally:
        broker.close()
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
