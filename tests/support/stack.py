"""A real batchsvc stack for integration tests: Celery worker processes on the
real Redis, the Flask app (in-process test client), storage local or S3 on moto.

Every stack gets its own queue names and Redis key prefix, so stale messages from
an earlier run, or a developer's `make up` stack, can never reach its workers."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchsvc.settings import PROJECT_ROOT, Settings
from batchsvc.storage.base import Storage
from tasks.celery_app import create_celery
from tests.support.client import authorize
from tests.support.moto_server import free_port


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker process build exactly these settings."""
    env = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is not None:
            env[f"BATCHSVC_{field.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """A worker whose test process died (killed, timed out) must not live on and
    compete for the CPU with the next run: Linux sends it SIGTERM then."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_group(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """TERM a process started with start_new_session, and its group; KILL it if
    it has not gone after `timeout`."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Worker:
    def __init__(
        self, name: str, queues: list[str], env: dict[str, str], log_dir: Path, extra: list[str], host: str = "test"
    ):
        self.name = name
        self.queues = queues
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        # Remote control (a model swap, a shutdown) goes to a node name through the broker,
        # which stacks running at once share: each stack's names are its own.
        self.host = host
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this start's lines begin in the (appended) log

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def nodename(self) -> str:
        return f"{self.name}@{self.host}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._log_start = log.tell()
        command = [
            sys.executable, "-m", "celery", "-A", "tasks.worker", "worker",
            "-Q", ",".join(self.queues), "-n", self.nodename, "--pool", "solo",
            "--prefetch-multiplier", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited; log:\n{self.log_tail()}")
        return f"{self.nodename} ready." in self.log_text(since_start=True)

    def wait_ready(self, timeout: float = 180) -> None:
        wait_until(self.ready, timeout, what=f"worker {self.name} ready")

    def log_text(self, since_start: bool = False) -> str:
        """The worker's log; with since_start, only what its latest start wrote."""
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_start if since_start else 0)
            return fh.read().decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)

    def stop(self) -> None:
        stop_group(self.process)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Stack:
    def __init__(
        self, settings: Settings, log_dir: Path, llm_models: list[str], *, llm_env: dict[str, str] | None = None
    ):
        # The port serve_http() will use is the stack's public address, so the
        # links that workers and the API build point back at this stack.
        self._port = free_port()
        settings = dataclasses.replace(settings, public_base_url=f"http://127.0.0.1:{self._port}")
        self.settings = settings
        self.log_dir = log_dir
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        llm_queues = [f"{settings.llm_queue_prefix}.{m}" for m in llm_models]
        self.cpu = Worker("cpu", [settings.cpu_queue], env, log_dir, [], host=settings.redis_prefix)
        llm_env = {**env, "BATCHSVC_PRELOAD_MODEL": llm_models[0], **(llm_env or {})}
        self.llm = Worker("llm", llm_queues, llm_env, log_dir, [], host=settings.redis_prefix)
        self.extra_workers: list[Worker] = []
        from web import create_app

        self.app = create_app(settings)
        # The stack's own caller: a submitter of the default tenant, for the test
        # client and for real HTTP clients (openai, the CLI) alike.
        self.api_key = authorize(self.app)
        self.client = self.app.test_client()
        self._http: Any = None

    def add_worker(self, name: str, like: Worker) -> Worker:
        """Another worker on the queues and environment of `like` (a second CPU or
        LLM worker); the caller starts it, stop() stops it."""
        worker = Worker(name, like.queues, like.env, self.log_dir, like.extra, host=like.host)
        self.extra_workers.append(worker)
        return worker

    @property
    def services(self):
        return self.app.extensions["batchsvc"]

    @property
    def storage(self) -> Storage:
        return self.services.storage

    def start(self, timeout: float = 180) -> Stack:
        for worker in (self.cpu, self.llm):
            worker.start()
        for worker in (self.cpu, self.llm):
            wait_until(worker.ready, timeout, what=f"worker {worker.name} ready")
        return self

    def serve_http(self) -> str:
        """Serve the API over real HTTP on loopback (for the openai client and the
        CLI); returns its base URL. Stopped by stop()."""
        if self._http is None:
            from werkzeug.serving import make_server

            self._http = make_server("127.0.0.1", self._port, self.app, threaded=True)
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._http.server_port}"

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for worker in (*self.extra_workers, self.llm, self.cpu):
            worker.stop()
        self.purge()

    def purge(self) -> None:
        """Drop this stack's queues and keys from the shared Redis databases."""
        celery = create_celery(self.settings)
        with celery.connection_for_write() as conn:
            client = conn.default_channel.client
            for pattern in (f"{self.settings.cpu_queue}*", f"{self.settings.llm_queue_prefix}.*"):
                for key in client.scan_iter(pattern):
                    client.delete(key)
        jobs = self.services.jobs
        for key in jobs.redis.scan_iter(f"{jobs.prefix}:*"):
            jobs.redis.delete(key)

    def wait_for_job(
        self, job_id: str, timeout: float = 600, client: Any = None, interval: float = 0.5
    ) -> dict[str, Any]:
        """Poll the job every `interval` s until it ends, as `client` (by default the stack's own key)."""
        client = client or self.client

        def finished() -> dict[str, Any] | None:
            body = client.get(f"/v1/batch/{job_id}").get_json()
            return body if body["status"] in ("completed", "failed", "cancelled", "expired") else None

        try:
            return wait_until(finished, timeout, interval=interval, what=f"job {job_id} to finish")
        except TimeoutError:
            raise TimeoutError(
                f"job {job_id} did not finish: {client.get(f'/v1/batch/{job_id}').get_json()}\n"
                f"--- cpu worker ---\n{self.cpu.log_tail()}\n--- llm worker ---\n{self.llm.log_tail()}"
            ) from None


def unique_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"cpu_queue": f"batch-{tag}", "llm_queue_prefix": f"llm-{tag}", "redis_prefix": f"it-{tag}"}
