"""Exactly-once accounting and idempotent operator actions on real workers
(issue 9, rows 10, 11, 12): a job cancelled before it ran still answers every
custom_id once, concurrent retries have one effect, duplicate deliveries of a
finished shard log no error."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound, Storage
from batchsvc.storage.manifest import ShardSummary
from tasks.celery_app import create_celery
from tasks.names import SHARD, llm_queue
from tests.support.client import upload
from tests.support.invariants import INSTANT_MODEL, fetch, instant_requests, lines_of
from tests.support.stack import Stack, wait_until


def submit(stack: Stack, count: int) -> tuple[str, list[dict[str, Any]]]:
    requests = instant_requests(count)
    response = upload(stack.client, b"".join(orjson.dumps(r) + b"\n" for r in requests), INSTANT_MODEL)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"], requests


def post_in_parallel(stack: Stack, path: str, times: int) -> list[tuple[int, dict[str, Any]]]:
    """`times` POSTs at once over real HTTP, each its own connection."""
    base = stack.serve_http()

    def post(_: int) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            base + path, method="POST", data=b"", headers={"Authorization": f"Bearer {stack.api_key}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())

    with ThreadPoolExecutor(times) as pool:
        return list(pool.map(post, range(times)))


def files_of(stack: Stack, job_id: str) -> tuple[list[dict], list[dict]]:
    response = stack.client.get(f"/v1/batch/{job_id}/results")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    results = lines_of(fetch(stack, body["results_url"]))
    errors = lines_of(fetch(stack, body["errors_url"])) if body["errors_url"] else []
    return results, errors


def test_a_job_cancelled_while_queued_answers_every_request_batch_cancelled(instant_stack: Stack) -> None:
    job_id, requests = submit(instant_stack, 4000)
    cancel = instant_stack.client.post(f"/v1/batch/{job_id}/cancel")
    assert cancel.status_code == 200 and cancel.get_json()["status"] in ("cancelling", "cancelled")

    job = instant_stack.wait_for_job(job_id, timeout=120)
    assert job["status"] == "cancelled"
    results, errors = files_of(instant_stack, job_id)
    seen = Counter(line["custom_id"] for line in results + errors)
    assert sorted(seen) == sorted(r["custom_id"] for r in requests) and set(seen.values()) == {1}
    assert results == []  # cancelled before it ran: not one request reached the engine
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    batch = instant_stack.client.get(f"/v1/batches/{job_id}").get_json()
    assert batch["error_file_id"] and batch["request_counts"] == {"total": 4000, "completed": 0, "failed": 4000}

    # Five parallel retries of its failed requests: one job, named by all five.
    answers = post_in_parallel(instant_stack, f"/v1/batch/{job_id}/retry?scope=failed_requests", 5)
    assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 202], answers
    assert len({body["job_id"] for _, body in answers}) == 1, answers
    retry_id = answers[0][1]["job_id"]
    retries = [j for j in instant_stack.client.get("/v1/batch?limit=100").get_json()["data"]]
    assert [j["job_id"] for j in retries if j["metadata"].get("retry_of") == job_id] == [retry_id]
    # Cancelled at once, so it too ends; then the next retry is a new job.
    instant_stack.client.post(f"/v1/batch/{retry_id}/cancel")
    assert instant_stack.wait_for_job(retry_id, timeout=120)["status"] == "cancelled"
    again = instant_stack.client.post(f"/v1/batch/{job_id}/retry?scope=failed_requests")
    assert again.status_code == 202 and again.get_json()["job_id"] != retry_id
    instant_stack.client.post(f"/v1/batch/{again.get_json()['job_id']}/cancel")


def test_parallel_retries_of_a_running_job_send_its_work_once(instant_stack: Stack) -> None:
    job_id, requests = submit(instant_stack, 600)
    wait_until(
        lambda: instant_stack.client.get(f"/v1/batch/{job_id}").get_json()["status"] == "in_progress",
        60,
        interval=0.05,
        what="the job running",
    )
    answers = post_in_parallel(instant_stack, f"/v1/batch/{job_id}/retry", 5)
    assert [status for status, _ in answers] == [202] * 5
    assert sorted(body["sent"] for _, body in answers) == [False, False, False, False, True], answers

    assert instant_stack.wait_for_job(job_id, timeout=120)["status"] == "completed"
    results, errors = files_of(instant_stack, job_id)
    assert errors == [] and [r["custom_id"] for r in results] == [r["custom_id"] for r in requests]


def test_duplicate_deliveries_of_a_finished_shard_log_no_error(instant_stack: Stack) -> None:
    job_id, _ = submit(instant_stack, 150)
    assert instant_stack.wait_for_job(job_id, timeout=120)["status"] == "completed"
    log_start = len(instant_stack.llm.log_text())

    # More deliveries than shard_max_attempts, as parallel retries and re-drives make them.
    celery = create_celery(instant_stack.settings)
    queue = llm_queue(instant_stack.settings, INSTANT_MODEL)
    tasks = [celery.send_task(SHARD, args=[job_id, 0, "default"], queue=queue) for _ in range(5)]
    try:
        summaries = [t.get(timeout=60) for t in tasks]
    finally:
        celery.close()
    assert {s["index"] for s in summaries} == {0}
    log = instant_stack.llm.log_text()[log_start:]
    assert log.count("already finished; duplicate delivery ignored") == 5
    assert "ERROR" not in log and "giving up" not in log, log[-2000:]


def test_a_job_that_fails_after_its_shards_ran_still_answers_every_request(instant_stack: Stack) -> None:
    """Finalize fails for good (one shard's output object is gone: nothing retries
    that): the job ends failed, and still publishes each request once, the two
    surviving shards' answers as they were and the lost shard's as batch_failed."""
    job_id, requests = submit(instant_stack, 300)  # 3 shards of 100, 10 ms a request
    job = layout.JobKey("default", job_id)
    storage = instant_stack.storage
    # The first shard done: prepare has sent the whole chord, and two shards still run.
    wait_until(lambda: _summaries(storage, job, 1), 60, interval=0.05, what="the first shard to finish")
    cpu = instant_stack.cpu.process
    assert cpu is not None
    os.killpg(cpu.pid, signal.SIGSTOP)  # finalize (on the cpu worker) waits until the output is gone
    try:
        summaries = wait_until(
            lambda: _summaries(storage, job, 3), 120, interval=0.1, what="the three shards to finish"
        )
        lost = [r["custom_id"] for r in requests[100:200]]
        storage.delete(summaries[1].output_key)
    finally:
        os.killpg(cpu.pid, signal.SIGCONT)

    ended = instant_stack.wait_for_job(job_id, timeout=120)
    assert ended["status"] == "failed", ended
    assert ended["errors"][0]["code"] == "internal_error", ended["errors"]
    results, errors = files_of(instant_stack, job_id)  # /results answers 200 with both links
    seen = Counter(line["custom_id"] for line in results + errors)
    assert sorted(seen) == sorted(r["custom_id"] for r in requests) and set(seen.values()) == {1}
    assert sorted(r["custom_id"] for r in results) == sorted(set(seen) - set(lost))
    assert sorted(e["custom_id"] for e in errors) == sorted(lost)
    assert {e["error"]["code"] for e in errors} == {"batch_failed"}
    batch = instant_stack.client.get(f"/v1/batches/{job_id}").get_json()
    assert batch["status"] == "failed" and batch["output_file_id"] and batch["error_file_id"], batch
    assert batch["request_counts"] == {"total": 300, "completed": 200, "failed": 100}, batch


def _summaries(storage: Storage, job: layout.JobKey, count: int) -> list[ShardSummary] | None:
    try:
        return [ShardSummary.load(storage, job, index) for index in range(count)]
    except ObjectNotFound:
        return None
