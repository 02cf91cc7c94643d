"""Every Prometheus metric batchsvc exports, defined once, and the exposition of a process.

Which process counts what (each is a scrape target; docs/observability.md):
    API (gunicorn)   HTTP requests and latency, jobs submitted; at scrape time also
                     the state read from Redis (queues, active jobs, worker starts)
    Celery workers   engine requests, tokens, latency, shards, checkpoints, attempts,
                     job outcomes and answer quality, the engine's own statistics
    every process    system (psutil) and GPU (NVML) readings, taken at scrape time

Several processes behind one port (gunicorn's workers, a prefork Celery worker's
children) share a directory named by PROMETHEUS_MULTIPROC_DIR, which must be set
before prometheus_client is imported; `exposition()` then adds them up.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client writes its files there from the first metric on: the directory must exist.
if os.environ.get(MULTIPROC_ENV):
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: E402
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

log = logging.getLogger(__name__)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SHARD = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

# --- API ---
HTTP_REQUESTS = Counter("batchsvc_http_requests", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "batchsvc_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"], buckets=_LATENCY
)

# --- jobs ---
JOBS_SUBMITTED = Counter("batchsvc_jobs_submitted", "Jobs accepted", ["model", "tenant"])
JOBS_FINISHED = Counter("batchsvc_jobs_finished", "Jobs that reached a terminal status", ["status", "model", "tenant"])

# --- workers ---
ENGINE_REQUESTS = Counter(
    "batchsvc_engine_requests", "Requests answered by a shard, by outcome and error code", ["model", "outcome", "code"]
)
ENGINE_PROMPT_TOKENS = Counter("batchsvc_engine_prompt_tokens", "Prompt tokens of answered requests", ["model"])
ENGINE_OUTPUT_TOKENS = Counter("batchsvc_engine_output_tokens", "Tokens generated", ["model"])
ENGINE_LATENCY = Histogram(
    "batchsvc_engine_request_duration_seconds",
    "From handing a request to the engine to its answer",
    ["model"],
    buckets=_LATENCY,
)
SHARD_DURATION = Histogram("batchsvc_shard_duration_seconds", "Time to run one shard", ["model"], buckets=_SHARD)
CHECKPOINT_WRITES = Counter("batchsvc_checkpoint_writes", "Checkpoint parts written by running shards", ["model"])
SHARD_ATTEMPTS = Counter("batchsvc_shard_attempts", "Starts of a shard task (a first run counts too)", ["model"])
SHARD_REDELIVERIES = Counter(
    "batchsvc_shard_redeliveries", "Shard messages the broker delivered again (a worker died holding it)", ["model"]
)
ENGINE_LOAD_SECONDS = Gauge(
    "batchsvc_engine_load_seconds", "Time the warm engine took to load", ["model"], multiprocess_mode="liveall"
)
WORKER_START_TIME = Gauge(
    "batchsvc_worker_start_time_seconds",
    "When this worker started (unix time)",
    ["worker"],
    multiprocess_mode="liveall",
)

# --- quality (counted when a job is finalized, from the numbers its stats show) ---
STRUCTURED_OUTPUTS = Counter(
    "batchsvc_structured_outputs",
    "Answers to requests with a JSON schema, by whether they parse against it",
    ["model", "valid"],
)
ANSWERS = Counter(
    "batchsvc_answers", "Answers by the value of the configured answer field", ["model", "field", "value"]
)


def job_finished(status: str, model: str, tenant: str) -> None:
    JOBS_FINISHED.labels(status, model, tenant).inc()


def request_answered(model: str, error_code: str | None, prompt: int, output: int, latency: float | None) -> None:
    ENGINE_REQUESTS.labels(model, "error" if error_code else "success", error_code or "").inc()
    if error_code is None:
        ENGINE_PROMPT_TOKENS.labels(model).inc(prompt)
        ENGINE_OUTPUT_TOKENS.labels(model).inc(output)
        if latency is not None:
            ENGINE_LATENCY.labels(model).observe(latency)


def record_quality(model: str, field: str, schema_checked: int, schema_valid: int, answers: dict[str, int]) -> None:
    if schema_checked:
        STRUCTURED_OUTPUTS.labels(model, "true").inc(schema_valid)
        STRUCTURED_OUTPUTS.labels(model, "false").inc(schema_checked - schema_valid)
    for value, count in answers.items():
        ANSWERS.labels(model, field, value).inc(count)


# --- readings taken at scrape time ---
class SystemCollector(Collector):
    """CPU, memory and disk of the host, through psutil."""

    def __init__(self, disk_paths: Iterable[str] = (".",)):
        self.disk_paths = list(disk_paths)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("batchsvc_system_cpu_ratio", "Host CPU busy, 0-1", value=psutil.cpu_percent() / 100)
        memory = psutil.virtual_memory()
        yield GaugeMetricFamily(
            "batchsvc_system_memory_used_ratio", "Host memory in use, 0-1", value=memory.percent / 100
        )
        yield GaugeMetricFamily("batchsvc_system_memory_total_bytes", "Host memory", value=memory.total)
        free = GaugeMetricFamily("batchsvc_system_disk_free_ratio", "Free disk space, 0-1", labels=["path"])
        for path in self.disk_paths:
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue
            free.add_metric([path], usage.free / usage.total if usage.total else 0.0)
        yield free


# Series that exist only on a host with a GPU (the dashboard's GPU panels read them).
GPU_FAMILIES = {
    "util": ("batchsvc_gpu_utilization_ratio", "GPU busy, 0-1"),
    "mem": ("batchsvc_gpu_memory_used_bytes", "GPU memory in use"),
    "total": ("batchsvc_gpu_memory_total_bytes", "GPU memory"),
    "temp": ("batchsvc_gpu_temperature_celsius", "GPU temperature"),
    "power": ("batchsvc_gpu_power_watts", "GPU power draw"),
}


class GPUCollector(Collector):
    """Utilization, memory, temperature and power of each GPU, through NVML.
    A host without a GPU or without the NVIDIA driver exports batchsvc_gpu_count 0."""

    def __init__(self, nvml: Any = None):
        self._nvml = nvml  # the pynvml module; tests may pass another with its interface
        self._lock = threading.Lock()
        self._ready: bool | None = None

    _shared: GPUCollector | None = None

    @classmethod
    def shared(cls) -> GPUCollector:
        """The process's collector: NVML is initialised once, not at every scrape."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def _init(self) -> Any:
        with self._lock:
            if self._ready is None:
                try:
                    if self._nvml is None:
                        import pynvml

                        self._nvml = pynvml
                    self._nvml.nvmlInit()
                    self._ready = True
                except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
                    log.info("no GPU metrics: %s", type(exc).__name__)
                    self._ready = False
            return self._nvml if self._ready else None

    def collect(self) -> Iterator[Metric]:
        nvml = self._init()
        families = {
            key: GaugeMetricFamily(name, text, labels=["gpu", "name"]) for key, (name, text) in GPU_FAMILIES.items()
        }
        count = 0
        if nvml is not None:
            try:
                count = nvml.nvmlDeviceGetCount()
                for index in range(count):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    name = nvml.nvmlDeviceGetName(handle)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    labels = [str(index), name]
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    families["util"].add_metric(labels, nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
                    families["mem"].add_metric(labels, memory.used)
                    families["total"].add_metric(labels, memory.total)
                    temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                    families["temp"].add_metric(labels, temp)
                    families["power"].add_metric(labels, nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
            except Exception as exc:  # a GPU fell off the bus: report what was read, never fail the scrape
                log.warning("reading GPU metrics failed: %s", exc)
        yield GaugeMetricFamily("batchsvc_gpu_count", "GPUs NVML sees on this host", value=count)
        yield from families.values()


class MemoryBudgetCollector(Collector):
    """An LLM worker's resident memory (its process tree, as the memory budget
    samples it) and its budget, from a callable returning (resident MB, budget MB),
    or None before the watch starts."""

    def __init__(self, reading: Callable[[], tuple[float, int] | None]):
        self._reading = reading

    def collect(self) -> Iterator[Metric]:
        reading = self._reading()
        if reading is None:
            return
        resident_mb, budget_mb = reading
        yield GaugeMetricFamily(
            "batchsvc_worker_resident_memory_bytes",
            "Resident memory of the LLM worker's process tree at the last sample",
            value=resident_mb * 2**20,
        )
        yield GaugeMetricFamily(
            "batchsvc_worker_memory_budget_bytes",
            "The memory budget (worker_max_rss_mb) past which the LLM worker exits; 0: none",
            value=budget_mb * 2**20,
        )


class EngineStatsCollector(Collector):
    """The warm engine's own statistics (KV-cache use, prefix-cache hits,
    running and waiting requests), from a callable that returns
    {model alias: {stat name: value}}; see Engine.stats()."""

    _HELP = {
        "kv_cache_usage_ratio": "KV-cache blocks in use, 0-1",
        "prefix_cache_hit_ratio": "Prefix-cache hits over queries since the engine started, 0-1",
        "requests_running": "Requests the engine is running",
        "requests_waiting": "Requests waiting in the engine",
    }

    def __init__(self, stats: Callable[[], dict[str, dict[str, float]]]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(f"batchsvc_engine_{name}", text, labels=["model"])
            for name, text in self._HELP.items()
        }
        for model, stats in self._stats().items():
            for name, value in stats.items():
                if name in families:
                    families[name].add_metric([model], value)
        yield from families.values()


# --- exposition ---
def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def reset_multiprocess_dir() -> None:
    """Empty the directory at the start of a process group (a worker's main process
    before it forks), so files of an earlier run are not added in."""
    path = multiprocess_dir()
    if path:
        for stale in Path(path).glob("*.db"):
            stale.unlink(missing_ok=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def process_exited(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay: they still count)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def exposition(*collectors: Collector) -> bytes:
    """This process's metrics (all its siblings' in multiprocess mode) and those
    `collectors` read now, in the text format."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
        body = generate_latest(counted)
    else:
        body = generate_latest(REGISTRY)
    read_now = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        read_now.register(collector)
    return body + generate_latest(read_now)


def start_worker_exporter(port: int, host: str, *collectors: Collector) -> Any:
    """Serve `exposition()` on host:port from a thread (Celery workers)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition(*collectors)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes every 15 s would drown the worker's log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
