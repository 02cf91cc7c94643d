"""Every setting, read once: `configs/settings.yaml`, then an optional second YAML
file named by `BATCHSVC_CONFIG`, then `BATCHSVC_<NAME>` environment variables.

Flask, Celery, the scripts and the tests all build their objects from one
`Settings`, so the web and the workers cannot disagree about where things live.

Redis database map (the defaults; each is its own URL so production can split them):
    db 0  Celery broker (queues)
    db 1  Celery result backend (chord counters, shard pointers)
    db 2  job state (`state_redis_url`): job hashes, progress, the job index
    db 3  rate limits (Flask-Limiter)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "BATCHSVC_"


@dataclass(frozen=True)
class Settings:
    # --- Redis ---
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    state_redis_url: str = "redis://127.0.0.1:6379/2"
    ratelimit_storage_url: str = "redis://127.0.0.1:6379/3"
    redis_prefix: str = "batchsvc"

    # --- Celery delivery ---
    cpu_queue: str = "batch"  # prepare, finalize, webhooks, beat jobs
    llm_queue_prefix: str = "llm"  # shard tasks go to f"{prefix}.{model alias}"
    # Must exceed the longest shard run, or Redis redelivers a shard that is still running.
    visibility_timeout_s: int = 6 * 3600
    result_expires_s: int = 7 * 24 * 3600
    shard_soft_time_limit_s: int = 4 * 3600
    # A shard whose engine fails this many times gives its unanswered requests up
    # as error lines, so one poisoned shard cannot hold a whole job hostage.
    shard_max_attempts: int = 3
    # The sweeper re-drives active jobs with no activity for this long whose queue
    # is empty (their messages were lost), checking every sweep_interval_s.
    stall_after_s: int = 900
    sweep_interval_s: int = 60
    # An LLM worker rewrites its record (model, state, current shard) this often;
    # a record not rewritten for 3x this long counts as a worker that is gone.
    worker_heartbeat_s: float = 10.0
    # A running shard (or prepare, finalize) holds a lease its heartbeat renews every
    # lease_renew_s; one not renewed for lease_ttl_s means its worker died or froze,
    # and the lease checker (beat, every lease_check_interval_s) sends the step again
    # at once: a kill -9 costs at most lease_ttl_s + lease_check_interval_s.
    lease_ttl_s: int = 15
    lease_renew_s: float = 5.0
    lease_check_interval_s: float = 5.0
    # The hung-engine watchdog: a shard whose lease is renewed but whose engine gives
    # no result for this long kills its worker (to be restarted) and is re-driven.
    stuck_after_s: int = 300
    # A finished job's objects (input, shards, results) are deleted after this
    # long; its record stays, marked data_expired_at. Checked hourly by beat.
    retention_s: int = 7 * 24 * 3600
    retention_interval_s: int = 3600
    # A dry run's estimate is kept this long for its caller to read, then Redis drops it.
    estimate_ttl_s: int = 900
    # Beat writes a snapshot of the job state to storage this often (batchsvc/pipeline/backup.py).
    backup_interval_s: int = 24 * 3600

    # --- Storage ---
    storage_backend: str = "local"  # "local" or "s3"
    storage_local_root: str = "var/storage"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_bucket: str = "batchsvc"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_public_endpoint: str | None = None
    s3_sse: bool = False
    s3_part_size_mb: int = 16

    # --- HTTP API ---
    public_base_url: str = "http://127.0.0.1:8000"
    # Signs local-storage download links. Empty means "make one up per process",
    # which only works for a single process; `make up` and production set it.
    signing_secret: str = ""
    result_link_ttl_s: int = 3600
    # How long the HTTP server waits for more bytes of a request body (then it answers 408).
    # The request line and headers get gunicorn's keepalive (web/server.py).
    http_body_timeout_s: float = 30.0
    # Reverse proxies in front of the API that append the client's address to
    # X-Forwarded-For (and set X-Forwarded-Proto): the client address that rate limits,
    # IP allowlists and the audit log see is the one the outermost of these saw.
    # 0 trusts no such header (a direct client could forge it); the deployments in
    # docker-compose.yml and deploy/k8s/ put one nginx in front and set 1.
    forwarded_hops: int = 0
    # A POST with an Idempotency-Key answers as its first request did for this long.
    idempotency_ttl_s: int = 24 * 3600

    # --- Access ---
    # An admin key for the default tenant, installed at start-up when set (make demo, make up).
    bootstrap_api_key: str = ""
    # Requests per API key (Flask-Limiter notation); a tenant may have its own.
    api_rate_limit: str = "1200/minute"
    # Per-tenant quotas, unless the tenant has its own: jobs not yet ended, and
    # their requests not yet answered. Past either, a submission answers 429.
    tenant_max_active_jobs: int = 20
    tenant_max_queued_requests: int = 2_000_000
    # How long a replaced webhook secret keeps signing after a rotation.
    webhook_secret_overlap_s: int = 24 * 3600

    # --- Input limits ---
    max_file_bytes: int = 200 * 1024 * 1024
    max_lines: int = 200_000
    max_line_bytes: int = 1024 * 1024
    max_errors_reported: int = 100
    # The longest completion_window a job may ask for (a window is parsed once, at submit).
    max_completion_window_s: int = 30 * 86400
    # A JSON request body (submit by URL, create a batch, admin calls); files come as multipart.
    max_json_body_bytes: int = 1024 * 1024
    fetch_timeout_s: float = 30.0
    # Comma-separated hosts or CIDRs that input_file_url and webhook_url may reach although they
    # are not public (the local MinIO, a demo or test receiver: "127.0.0.1, minio, 10.8.0.0/16").
    # Everything else must resolve to public addresses only (batchsvc/outbound/netguard.py). Empty by default.
    outbound_allowlist: str = ""

    # --- Execution ---
    models_file: str = "configs/models.yaml"
    shard_size: int = 1024
    progress_every: int = 100  # publish progress at least every N finished requests
    progress_interval_s: float = 2.0  # ... and at least this often while requests finish

    # The budget of one structured-output grammar compile on an LLM worker
    # (batchsvc/inference/grammar_budget.py); past it, that request alone fails.
    grammar_compile_timeout_s: float = 10.0
    grammar_compile_memory_mb: int = 2048
    # What one job may spend compiling grammars in all, summed over its shards and
    # workers (in Redis); once spent, its further schemas that no verdict is kept for
    # fail at once (job_grammar_budget_exceeded); a compile is cut at what is left. 60 s
    # is six schemas that each spend the whole 10 s budget above, while an ordinary
    # schema compiles in milliseconds (1-27 ms measured for 2-20 properties with the
    # tiny model's 2,403-token vocabulary; a large vocabulary costs more), so a job
    # sending each request its own ordinary schema keeps within it for thousands of
    # them. It bounds the worker time one job can take with pathological schemas,
    # whatever its size; raise it for jobs of many distinct large schemas. 0: no limit.
    grammar_job_budget_s: float = 60.0
    # A shard that has compiled grammars for this long in one run yields its worker
    # before its next compile when another shard waits in its queue: it checkpoints,
    # goes back to the end of the queue (not counted as a start) and resumes there, so
    # a job of many slow schemas delays the job behind it by about this plus one
    # compile (grammar_compile_timeout_s), not by all its compiles. Each run compiles
    # at least one schema. 0: never yields.
    grammar_yield_after_s: float = 5.0
    # The resident memory an LLM worker's process tree (the worker, vLLM's engine
    # core, the grammar compiler child) may hold, in MB; past it the worker exits to
    # be restarted, and the request that did it fails alone (worker_memory_exceeded;
    # batchsvc/inference/memory_budget.py). 0: no budget. 16384 is for a GPU worker of
    # a 1-4B model: steady state is a few GB of host memory per engine process (torch
    # and the CUDA runtime, the tokenizer, pinned buffers; the weights live on the GPU),
    # plus up to grammar_compile_memory_mb for the compiler child, plus the weights
    # paged in while they load (8 GB for 4B in BF16). It is the LLM pod's memory request
    # (24Gi) less its /dev/shm (8Gi) in deploy/k8s/gpu, so the worker ends itself long
    # before the pod's limit brings the kernel's OOM killer, which would say nothing.
    worker_max_rss_mb: int = 16384

    # --- Webhooks ---
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 2.0
    webhook_backoff_max_s: float = 600.0
    # Space-separated `whsec_` secrets, newest first. Each adds one signature to every
    # webhook, so during a rotation receivers holding either secret verify. Empty sends
    # webhooks unsigned (one warning per worker). These sign for tenants with no secret of
    # their own (a single-tenant deployment); `batchsvc tenants rotate-webhook-secret` gives one.
    webhook_secrets: str = ""

    # --- Operations ---
    # `make up` (supervisord): a process that crashes this many times within
    # restart_window_s is stopped and reported (make status, crashguard.log, Redis).
    restart_max_crashes: int = 3
    restart_window_s: int = 600
    sentry_dsn: str | None = None
    environment: str = "development"
    log_level: str = "INFO"
    log_format: str = "text"  # "text" for people, "json" (one object a line) for log collectors
    # Job stats and metrics count the values of this field of JSON answers (empty: none).
    answer_field: str = "recommendation"
    # A Celery worker serves its Prometheus metrics on this port (0: none); the API serves /metrics.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # /readyz asks a live LLM worker of each of these models (comma-separated; empty: none).
    worker_models: str = ""
    readiness_timeout_s: float = 1.0
    readiness_cache_s: float = 5.0
    # Flower asks for this user and password (basic auth); both must be set for `make up`'s Flower.
    flower_user: str = "admin"
    flower_password: str = ""
    schedule_file: str = "configs/schedule.yaml"

    def path(self, value: str) -> Path:
        """Resolve a settings path relative to the project root."""
        p = Path(value)
        return p if p.is_absolute() else PROJECT_ROOT / p


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Turn a YAML value or an environment string into the field's declared type."""
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if raw is None or (optional and isinstance(raw, str) and raw.strip() in ("", "null", "none")):
        if optional:
            return None
        raise ValueError(f"setting {name} may not be empty")
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise ValueError(f"setting {name}: {raw!r} is not a valid {hint.__name__}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return data


def load_settings(environ: typing.Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the YAML files, the environment and explicit overrides (tests)."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(Settings)
    known = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    sources = [PROJECT_ROOT / "configs" / "settings.yaml"]
    if environ.get("BATCHSVC_CONFIG"):
        sources.append(Path(environ["BATCHSVC_CONFIG"]))
    for source in sources:
        for key, raw in _read_yaml(source).items():
            if key not in known:
                raise ValueError(f"{source}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, hints[key])

    for name in known:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            values[name] = _coerce(env_name, environ[env_name], hints[name])
    # The conventional unprefixed name, so Sentry's own docs apply.
    if "SENTRY_DSN" in environ and "sentry_dsn" not in values:
        values["sentry_dsn"] = environ["SENTRY_DSN"] or None

    for key, raw in overrides.items():
        if key not in known:
            raise ValueError(f"unknown setting {key!r}")
        values[key] = raw
    return Settings(**values)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()


__all__ = ["PROJECT_ROOT", "Settings", "get_settings", "load_settings"]


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name`: one place for a default that
    others (a validator's keyword arguments, a config check) fall back to."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)
