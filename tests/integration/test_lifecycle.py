"""Cancel, expiry and partial results on real workers (seed API shape)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.client import upload
from tests.support.examples import write_candidates
from tests.support.invariants import assert_each_request_once, lines_of
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration


def download(stack: Stack, url: str) -> bytes:
    response = stack.client.get(urlsplit(url).path + ("?" + urlsplit(url).query if urlsplit(url).query else ""))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.data


def submit(stack: Stack, path: Path, **fields: object) -> str:
    response = upload(stack.client, path.read_bytes(), "tiny-random", **fields)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def job(stack: Stack, job_id: str) -> dict:
    return stack.client.get(f"/v1/batch/{job_id}").get_json()


def test_cancel_mid_run_keeps_what_finished_and_accounts_for_every_request(local_stack: Stack, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "big.jsonl", 1500)
    job_id = submit(local_stack, tmp_path / "big.jsonl")
    running = wait_until(lambda: (j := job(local_stack, job_id))["progress"]["completed"] >= 100 and j, 300,
                         what="the first checkpoint")  # fmt: skip
    assert running["status"] == "in_progress"

    # While it runs, what finished so far downloads as whole lines.
    partial = local_stack.client.get(f"/v1/batch/{job_id}/results?partial=true").get_json()
    assert partial["partial"] is True
    so_far = lines_of(download(local_stack, partial["results_url"]))
    ids = [line["custom_id"] for line in so_far]
    assert len(ids) == len(set(ids)) >= running["progress"]["completed"]
    assert set(ids) <= {r["custom_id"] for r in requests}

    cancelled = local_stack.client.post(f"/v1/batch/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] in ("cancelling", "cancelled")
    final = local_stack.wait_for_job(job_id, timeout=300)
    assert final["status"] == "cancelled"

    links = local_stack.client.get(f"/v1/batch/{job_id}/results").get_json()
    results = lines_of(download(local_stack, links["results_url"]))
    errors = lines_of(download(local_stack, links["errors_url"]))
    assert_each_request_once(requests, results, errors)
    not_run = [e for e in errors if (e["error"] or {}).get("code") == "batch_cancelled"]
    assert len(results) + (len(errors) - len(not_run)) + len(not_run) == 1500
    assert 0 < len(not_run) < 1500  # it stopped part-way
    assert len(results) >= len(so_far)  # nothing finished before the cancel was lost
    assert final["progress"]["completed"] == len(results)
    assert final["progress"]["failed"] == len(errors)
    assert local_stack.client.post(f"/v1/batch/{job_id}/cancel").get_json()["status"] == "cancelled"


def test_a_job_past_its_completion_window_expires_with_partial_results(local_stack: Stack, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "slow.jsonl", 3000)  # ~40 s of work at ~80 req/s
    # The window starts at submit: start it with the worker idle, not behind another test's job.
    wait_until(lambda: not local_stack.services.jobs.active_ids(), 300, what="the stack to be idle")
    job_id = submit(local_stack, tmp_path / "slow.jsonl", completion_window="15s")
    final = local_stack.wait_for_job(job_id, timeout=300)
    assert final["status"] == "expired"

    links = local_stack.client.get(f"/v1/batch/{job_id}/results").get_json()
    results = lines_of(download(local_stack, links["results_url"]))
    errors = lines_of(download(local_stack, links["errors_url"]))
    assert_each_request_once(requests, results, errors)
    assert results, "requests answered inside the window are kept"
    expired = [e for e in errors if (e["error"] or {}).get("code") == "batch_expired"]
    assert expired and len(results) + len(errors) == 3000


def test_cancelling_a_finished_job_is_a_conflict(local_stack: Stack, tmp_path: Path) -> None:
    write_candidates(tmp_path / "small.jsonl", 3)
    job_id = submit(local_stack, tmp_path / "small.jsonl")
    assert local_stack.wait_for_job(job_id, timeout=120)["status"] == "completed"
    response = local_stack.client.post(f"/v1/batch/{job_id}/cancel")
    assert response.status_code == 409
    assert response.get_json()["error"]["type"] == "conflict"
