"""The installed `batchsvc` command against a real stack over HTTP: real workers,
real Redis, the vLLM engine on the tiny model, local storage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.examples import write_candidates
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration

BATCHSVC = Path(sys.executable).parent / "batchsvc"  # the console script pip installed next to this Python
JOB_ID_RE = re.compile(r"batch_[0-9a-f]{32}")


API_KEY: dict[str, str] = {}  # the stack's submitter key, set by the url fixture


@pytest.fixture(scope="module")
def url(local_stack: Stack) -> str:
    API_KEY["key"] = local_stack.api_key
    return local_stack.serve_http()


def batchsvc(url: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHSVC_URL": url, "BATCHSVC_API_KEY": API_KEY["key"]}
    return subprocess.run([str(BATCHSVC), *args], env=env, capture_output=True, text=True, timeout=timeout)


def status_of(url: str, job_id: str) -> dict:
    done = batchsvc(url, "status", job_id, timeout=60)
    assert done.returncode in (0, 1, 3), done.stderr
    return orjson.loads(done.stdout)


def test_submit_wait_then_results(url: str, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "candidates.jsonl", 100)

    submit = batchsvc(url, "submit", str(tmp_path / "candidates.jsonl"), "--model", "tiny-random", "--wait")

    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.splitlines()[0]
    assert JOB_ID_RE.fullmatch(job_id)
    assert "100/100" in submit.stderr
    assert "job completed: 100 succeeded, 0 failed of 100" in submit.stderr

    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    results = batchsvc(url, "results", job_id, "-o", str(out), "--errors", str(err))

    assert results.returncode == 0, results.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert err.read_bytes() == b""


def test_submit_wait_of_a_file_with_a_bad_line_exits_1(url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_candidates(path, 10)
    path.write_bytes(path.read_bytes() + b"not json\n")

    submit = batchsvc(url, "submit", str(path), "--model", "tiny-random", "--wait")

    assert submit.returncode == 1, submit.stderr
    assert JOB_ID_RE.fullmatch(submit.stdout.splitlines()[0])
    assert "job failed" in submit.stderr
    assert "line 11:" in submit.stderr


def test_a_job_cancelled_while_it_runs_exits_3(url: str, tmp_path: Path) -> None:
    write_candidates(tmp_path / "many.jsonl", 1500)
    submit = batchsvc(url, "submit", str(tmp_path / "many.jsonl"), "--model", "tiny-random")
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip()
    wait_until(lambda: status_of(url, job_id)["progress"]["completed"] > 0, 300, interval=0.5, what="progress")

    partial = tmp_path / "partial.jsonl"
    so_far = batchsvc(url, "results", job_id, "-o", str(partial), "--partial")
    assert so_far.returncode == 0, so_far.stderr
    assert [orjson.loads(line)["custom_id"] for line in partial.read_bytes().splitlines()]  # whole JSON lines

    cancel = batchsvc(url, "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() in ("cancelling", "cancelled")

    final = batchsvc(url, "status", job_id, "--wait")
    assert final.returncode == 3, final.stderr
    job = orjson.loads(final.stdout)
    assert job["status"] == "cancelled"
    assert job["progress"]["completed"] + job["progress"]["failed"] == 1500  # unrun requests are error lines

    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    results = batchsvc(url, "results", job_id, "-o", str(out), "--errors", str(err))
    assert results.returncode == 0, results.stderr
    done = {orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()}
    failed = {orjson.loads(line)["custom_id"] for line in err.read_bytes().splitlines()}
    assert done and failed and not done & failed
    assert len(done) + len(failed) == 1500


def test_estimate_then_run_then_rerun_with_reuse_and_report_costs(url: str, tmp_path: Path) -> None:
    path = tmp_path / "nightly.jsonl"
    write_candidates(path, 300, seed=41)
    name = ["--model", "tiny-random", "--name", "cli-nightly"]

    dry = batchsvc(url, "estimate", str(path), *name, "--completion-window", "24h")
    assert dry.returncode == 0, dry.stderr
    estimate = orjson.loads(dry.stdout)
    assert (estimate["status"], estimate["requests"], estimate["reused"]) == ("done", 300, 0)
    assert estimate["warnings"] == []

    first = batchsvc(url, "submit", str(path), *name, "--wait")
    assert first.returncode == 0, first.stderr
    job = status_of(url, first.stdout.splitlines()[0])
    assert job["usage"]["input_tokens"] == estimate["prompt_tokens"]

    again = orjson.loads(batchsvc(url, "estimate", str(path), *name, "--reuse", "latest").stdout)
    assert (again["reused"], again["to_run"], again["rate_source"]) == (300, 0, "measured")
    measured = orjson.loads(batchsvc(url, "estimate", str(path), *name, "--force").stdout)
    assert (measured["to_run"], measured["rate_source"]) == (300, "measured")
    second = batchsvc(url, "submit", str(path), *name, "--reuse", "latest", "--wait")
    assert second.returncode == 0, second.stderr
    rerun = status_of(url, second.stdout.splitlines()[0])
    assert (rerun["reused"], rerun["reuse_from"], rerun["usage"]["total_tokens"]) == (300, [job["job_id"]], 0)

    report = batchsvc(url, "report", "costs", "--since", "1d")
    assert report.returncode == 0, report.stderr
    header, *rows = report.stdout.splitlines()
    assert header.split()[:4] == ["MODEL", "JOBS", "REQUESTS", "REUSED"]
    [row] = [r.split() for r in rows if r.startswith("tiny-random")]
    assert row[3] == "300"  # reused by the rerun; the 300 requests of the first run, plus others, ran
    print(
        f"\nestimate: {estimate['requests']} requests, {estimate['prompt_tokens']} prompt tokens, "
        f"{estimate['estimated_seconds']} s at {estimate['req_per_sec']} req/s ({estimate['rate_source']}), "
        f"cost {estimate['estimated_cost']}\n"
        f"real run: {job['usage']['input_tokens']} prompt tokens, {job['started_at']} -> {job['finished_at']}, "
        f"engine {job['engine_seconds']} s, cost {job['cost']}\n"
        f"estimate after it, --force: {measured['estimated_seconds']} s at {measured['req_per_sec']} req/s, "
        f"cost {measured['estimated_cost']}; --reuse latest: {again['reused']} reused, {again['to_run']} to run\n"
        f"{report.stdout}"
    )
