"""The CLI against the real Flask app served over HTTP on loopback: real Redis for jobs and the
broker (no worker consumes the queue), local storage under tmp_path. Jobs that must run are driven
by calling the core directly, as the worker would."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from flask import Flask, request
from werkzeug.serving import BaseWSGIServer, make_server

from batchsvc.access import Role
from batchsvc.client.cli import main, progress_line
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import run_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import JobStatus
from tasks.names import queue_keys
from tests.conftest import make_settings
from tests.support.client import grant
from web import create_app

MODEL = "instant-test"


@pytest.fixture
def server() -> Iterator[BaseWSGIServer]:
    # The port is known only once bound, and the app's download links must point at it.
    server = make_server("127.0.0.1", 0, lambda environ, start_response: [])
    yield server
    server.server_close()


@pytest.fixture
def settings(tmp_path: Path, server: BaseWSGIServer) -> Settings:
    # A queue of our own on the broker DB, so nothing we enqueue collides with other tests.
    return make_settings(
        tmp_path,
        cpu_queue=f"test-{uuid.uuid4().hex[:12]}",
        public_base_url=f"http://127.0.0.1:{server.server_port}",
        shard_size=2,
    )


@pytest.fixture
def app(
    settings: Settings, services: Services, server: BaseWSGIServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    """The app, served on `server` until the test ends, and a key for the CLI to
    call it with; `services` drops its Redis keys afterwards."""
    app = create_app(settings)
    monkeypatch.setenv("BATCHSVC_API_KEY", grant(app))
    app.config["seen_auth"] = seen = []
    app.before_request(lambda: seen.append(request.headers.get("Authorization")))
    server.app = app
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app
    server.shutdown()
    thread.join()
    app.extensions["celery"].close()
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        broker.delete(*queue_keys(settings.cpu_queue))
    finally:
        broker.close()


def cli(settings: Settings, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, args, env={"BATCHSVC_URL": settings.public_base_url, **env})


def write_jsonl(path: Path, custom_ids: list[str]) -> Path:
    body = {"messages": [{"role": "user", "content": "rate this candidate"}], "max_tokens": 8}
    lines = [{"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": body} for c in custom_ids]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def submitted(settings: Settings, path: Path) -> str:
    result = cli(settings, "submit", str(path), "--model", MODEL)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def start(app: Flask, job_id: str) -> Any:
    """What the cpu worker does before the shards run."""
    svc: Services = app.extensions["batchsvc"]
    manifest = prepare_job(svc, job_id)
    assert manifest is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    return manifest


# --- against the server ----------------------------------------------------------


def test_list_on_an_empty_server_prints_only_the_header(app: Flask, settings: Settings) -> None:
    result = cli(settings, "list")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["ID", "STATUS", "MODEL", "DONE/TOTAL", "CREATED"]
    assert result.stderr == ""


def test_list_shows_a_row_per_job_and_the_next_page(app: Flask, settings: Settings, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ["a", "b", "c"])
    first, second = submitted(settings, data), submitted(settings, data)

    result = cli(settings, "list", "--limit", "1")

    assert result.exit_code == 0, result.stderr
    _, row = result.stdout.splitlines()
    assert row.split()[:4] == [second, "queued", MODEL, "0/3"]
    assert f"--after {second}" in result.stderr
    assert cli(settings, "list", "--after", second).stdout.splitlines()[1].split()[0] == first


@pytest.mark.parametrize(("option", "sent"), [("high", "high"), ("low", "low"), ("7", 7)])
def test_submit_sends_the_priority_as_given(
    app: Flask, settings: Settings, services: Services, tmp_path: Path, option: str, sent: Any
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ["a"])
    result = cli(settings, "submit", str(data), "--model", MODEL, "--priority", option)
    assert result.exit_code == 0, result.stderr
    assert services.jobs.get(result.stdout.strip()).metadata == {"priority": sent}


def test_workers_list_and_swap(app: Flask, settings: Settings, services: Services) -> None:
    from batchsvc.store.workers import WorkerRecord

    services.workers.save(
        WorkerRecord(
            name="llm-gpu0@host", model="tiny-random", state="busy", current_shard="batch_x/2", engine_load_s=3.25
        )
    )
    admin = {"BATCHSVC_API_KEY": grant(app, role=Role.ADMIN)}

    swap = cli(settings, "workers", "swap", "llm-gpu0@host", "tiny-random-2k", **admin)
    listed = cli(settings, "workers", "list", **admin)

    assert swap.exit_code == 0, swap.stderr
    assert "after its current shard" in swap.stderr
    assert listed.exit_code == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "MODEL", "STATE", "SHARD", "LOADED", "LOAD_S", "SHARDS"]
    assert row.split() == [
        "llm-gpu0@host",
        "tiny-random",
        "->",
        "tiny-random-2k",
        "swapping",
        "batch_x/2",
        "-",
        "3.2",
        "0",
    ]
    refused = cli(settings, "workers", "swap", "llm-gpu0@host", "gpt-17", **admin)
    assert refused.exit_code == 2 and "gpt-17" in refused.stderr


def test_the_api_key_is_sent_as_a_bearer_token(app: Flask, settings: Settings) -> None:
    from_env, from_option = grant(app, role=Role.VIEWER), grant(app, role=Role.VIEWER)
    assert cli(settings, "list", BATCHSVC_API_KEY=from_env).exit_code == 0
    assert cli(settings, "--api-key", from_option, "list").exit_code == 0
    assert app.config["seen_auth"] == [f"Bearer {from_env}", f"Bearer {from_option}"]


def test_a_wrong_key_exits_2_with_the_api_message(app: Flask, settings: Settings) -> None:
    result = cli(settings, "list", BATCHSVC_API_KEY="bsk_not-a-key")
    assert result.exit_code == 2
    assert "API key is not valid" in result.stderr


def test_status_of_an_unknown_job_is_exit_2_with_the_api_message(app: Flask, settings: Settings) -> None:
    result = cli(settings, "status", "batch_nope")
    assert result.exit_code == 2
    assert "not_found: no batch job with id 'batch_nope'" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_results_of_a_queued_job_is_exit_2_with_the_409_message(app: Flask, settings: Settings, tmp_path: Path) -> None:
    job_id = submitted(settings, write_jsonl(tmp_path / "in.jsonl", ["a"]))

    result = cli(settings, "results", job_id, "-o", str(tmp_path / "out.jsonl"))

    assert result.exit_code == 2
    assert "conflict: job is queued; it has no results yet" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_cancel_of_a_queued_job_prints_cancelling_until_its_requests_are_answered(
    app: Flask, settings: Settings, tmp_path: Path
) -> None:
    # No worker here: prepare answers each request batch_cancelled (tests/hostile).
    job_id = submitted(settings, write_jsonl(tmp_path / "in.jsonl", ["a"]))

    result = cli(settings, "cancel", job_id)
    assert (result.exit_code, result.stdout) == (0, "cancelling\n")

    status = cli(settings, "status", job_id)
    assert status.exit_code == 0
    assert orjson.loads(status.stdout)["status"] == "cancelling"


def test_status_of_a_queued_job_is_json_and_exit_0(app: Flask, settings: Settings, tmp_path: Path) -> None:
    job_id = submitted(settings, write_jsonl(tmp_path / "in.jsonl", ["a", "b"]))
    result = cli(settings, "status", job_id)
    assert result.exit_code == 0
    view = orjson.loads(result.stdout)
    assert (view["job_id"], view["status"], view["progress"]["total"]) == (job_id, "queued", 2)


def test_a_failed_job_exits_1_and_names_the_line(app: Flask, settings: Settings, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["a"])
    path.write_bytes(path.read_bytes() + b"{oops\n")
    job_id = submitted(settings, path)
    prepare_job(app.extensions["batchsvc"], job_id)

    result = cli(settings, "status", job_id, "--wait")

    assert result.exit_code == 1
    assert orjson.loads(result.stdout)["status"] == "failed"
    assert "line 2:" in result.stderr


def test_results_of_a_completed_job_are_downloaded(app: Flask, settings: Settings, tmp_path: Path) -> None:
    job_id = submitted(settings, write_jsonl(tmp_path / "in.jsonl", ["a", "b", "c"]))
    svc: Services = app.extensions["batchsvc"]
    for shard in start(app, job_id).shards:
        run_shard(svc, job_id, shard.index)
    finalize_job(svc, job_id)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"

    result = cli(settings, "results", job_id, "-o", str(out), "--errors", str(err))

    assert result.exit_code == 0, result.stderr
    assert [orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()] == ["a", "b", "c"]
    assert err.read_bytes() == b""
    assert f"{out}: 3 lines" in result.stderr
    assert not list(tmp_path.glob("*.part"))


def test_partial_results_of_a_running_job(app: Flask, settings: Settings, tmp_path: Path) -> None:
    job_id = submitted(settings, write_jsonl(tmp_path / "in.jsonl", ["a", "b", "c", "d"]))
    manifest = start(app, job_id)
    assert len(manifest.shards) == 2
    run_shard(app.extensions["batchsvc"], job_id, 0)  # the first of two shards of 2 lines
    out = tmp_path / "out.jsonl"

    assert cli(settings, "results", job_id, "-o", str(out)).exit_code == 2  # not without --partial
    result = cli(settings, "results", job_id, "-o", str(out), "--partial")

    assert result.exit_code == 0, result.stderr
    assert [orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()] == ["a", "b"]
    assert "in_progress: 2 of 4 finished so far" in result.stderr


def test_a_refused_connection_is_exit_2(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = CliRunner().invoke(main, ["--url", f"http://127.0.0.1:{port}", "status", "batch_x"])

    assert result.exit_code == 2
    assert f"cannot reach 127.0.0.1:{port}: ConnectionError" in result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["submit", str(tmp_path / "missing.jsonl"), "--model", MODEL]).exit_code == 2
    assert CliRunner().invoke(main, ["list", "--limit", "0"]).exit_code == 2


# --- the progress line -----------------------------------------------------------


def view(completed: int, failed: int, total: int | None, req_per_sec: float | None, remaining: float | None) -> dict:
    percent = 100.0 * (completed + failed) / total if total else 0.0
    return {
        "status": "in_progress",
        "progress": {"completed": completed, "failed": failed, "total": total, "percent": percent},
        "throughput": {"req_per_sec": req_per_sec, "tokens_per_sec": None, "estimated_remaining": remaining},
    }


def test_progress_line_with_rates() -> None:
    line = progress_line(view(30, 10, 100, 12.345, 125), width=10)
    assert line == "[####......] 40/100 (40%)  12.3 req/s  ETA 02:05  in_progress"


def test_progress_line_over_an_hour() -> None:
    assert "ETA 1:01:01" in progress_line(view(1, 0, 100_000, 0.5, 3661))


def test_progress_line_before_any_rate() -> None:
    line = progress_line(view(0, 0, 100, None, None), width=10)
    assert line == "[..........] 0/100 (0%)  -- req/s  ETA --:--  in_progress"


def test_progress_line_with_an_unknown_total() -> None:
    line = progress_line(view(0, 0, None, None, None), width=4)
    assert line.startswith("[....] 0/? (0%)")
