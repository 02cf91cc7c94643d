"""A stack as `make up` runs it, watched by a real Prometheus: the API under gunicorn
with the Procfile's configuration, two workers (multiprocess metrics), a CPU and an LLM Celery worker (the tiny
vLLM model) each serving its own /metrics, and Prometheus scraping all three with
the shipped configs/prometheus files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml

from batchsvc.settings import PROJECT_ROOT
from tests.conftest import make_settings
from tests.support.examples import candidate_requests
from tests.support.moto_server import free_port
from tests.support.stack import Stack, settings_env, stop_group, unique_names, wait_until

pytestmark = pytest.mark.integration

PROMETHEUS_CONFIGS = PROJECT_ROOT / "configs" / "prometheus"
ADMIN_KEY = "bsk_observability-test-admin-key"


@dataclass
class Watched:
    stack: Stack
    api: str  # the gunicorn API's base URL
    prometheus: str  # Prometheus's base URL
    admin: dict[str, str]  # headers of an admin key

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        return wait_until(lambda: self.query(expr), timeout, interval=0.5, what=f"Prometheus to see {expr}")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _prometheus_config(tmp: Path, api_port: int, cpu_port: int, llm_port: int, key_file: Path) -> Path:
    """The shipped prometheus.yml, pointed at this stack; its alert rules as shipped."""
    config = yaml.safe_load((PROMETHEUS_CONFIGS / "prometheus.yml").read_text())
    # Lowered from 15 s so that a minute-long test sees several scrapes.
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_CONFIGS / "alerts.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["batchsvc-api"]["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    jobs["batchsvc-api"]["authorization"]["credentials_file"] = str(key_file)
    jobs["batchsvc-workers"]["static_configs"] = [
        {"targets": [f"127.0.0.1:{cpu_port}"], "labels": {"role": "cpu"}},
        {"targets": [f"127.0.0.1:{llm_port}"], "labels": {"role": "llm"}},
    ]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: scripts/setup.sh installs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("observed")
    settings = make_settings(
        tmp,
        shard_size=16,
        log_format="json",
        worker_models="tiny-random",
        bootstrap_api_key=ADMIN_KEY,
        **unique_names(),
    )
    stack = Stack(settings, tmp, llm_models=["tiny-random"])
    cpu_port, llm_port = free_port(), free_port()
    stack.cpu.env = {**stack.cpu.env, "BATCHSVC_METRICS_PORT": str(cpu_port)}
    stack.llm.env = {**stack.llm.env, "BATCHSVC_METRICS_PORT": str(llm_port)}
    api_port = int(stack.settings.public_base_url.rsplit(":", 1)[1])
    web_env = {
        **os.environ,
        **settings_env(stack.settings),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "web-metrics"),
        "PYTHONUNBUFFERED": "1",
    }
    # The Procfile's server: gunicorn with web/server.py's configuration (2 gevent workers).
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:web.server", "--bind", f"127.0.0.1:{api_port}"]
    key_file = tmp / "api-key"
    key_file.write_text(ADMIN_KEY)
    config = _prometheus_config(tmp, api_port, cpu_port, llm_port, key_file)
    prom_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        processes.append(_start([*gunicorn, "web:create_app()"], web_env, tmp / "web.log"))
        processes.append(
            _start(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                dict(os.environ),
                tmp / "prometheus.log",
            )
        )
        api, prometheus = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}"

        def answers(url: str) -> bool:
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(lambda: answers(f"{api}/healthz"), 60, what="gunicorn")
        wait_until(lambda: answers(f"{prometheus}/-/ready"), 60, what="prometheus")
        watched = Watched(stack, api, prometheus, {"Authorization": f"Bearer {ADMIN_KEY}"})
        # Every target scraped once before any job, so rates over the job have a start.
        watched.wait_for("count(up == 1) == 3")
        yield watched
    finally:
        for process in reversed(processes):
            stop_group(process)
        stack.stop()


@dataclass
class FinishedJob:
    id: str
    body: dict[str, Any]  # GET /v1/batch/{id} once it ended
    requests: list[dict[str, Any]]  # the input lines
    results: list[dict[str, Any]]  # the output lines
    status_polls: int  # GETs of /v1/batch/{id} this test made


@pytest.fixture(scope="session")
def finished_job(watched: Watched) -> FinishedJob:
    """One real job through the gunicorn API, the Celery workers and vLLM."""
    lines = candidate_requests(24)
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    response = requests.post(
        f"{watched.api}/v1/batch",
        headers=watched.admin,
        data={"model": "tiny-random"},
        files={"file": ("input.jsonl", data, "application/jsonl")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    polls: list[int] = []  # appended to from several threads (append is atomic)

    def status() -> dict[str, Any]:
        polls.append(1)
        return requests.get(f"{watched.api}/v1/batch/{job_id}", headers=watched.admin, timeout=10).json()

    # Polled from several threads at once, so both gunicorn workers answer some.
    with ThreadPoolExecutor(8) as pool:
        body = wait_until(
            lambda: next((b for b in pool.map(lambda _: status(), range(8)) if b["status"] == "completed"), None),
            240,
            interval=0.5,
            what=f"job {job_id} to complete",
        )
    links = requests.get(f"{watched.api}/v1/batch/{job_id}/results", headers=watched.admin, timeout=10).json()
    results_text = requests.get(links["results_url"], timeout=30).text
    results = [orjson.loads(line) for line in results_text.splitlines() if line.strip()]
    return FinishedJob(job_id, body, lines, results, len(polls))
