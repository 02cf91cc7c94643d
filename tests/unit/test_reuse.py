"""Reuse in the pipeline's plain functions (instant engine): answers of an
earlier job's identical requests, never the engine, never another tenant's."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsvc.errors import ServiceError
from batchsvc.pipeline.costs import cost_report
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import finish_reused_shards, run_shard
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import Job, JobStatus
from tests.conftest import make_settings

MODEL = "instant-test"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, shard_size=4)


def lines(n: int, text: str = "score") -> bytes:
    rows = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"{text} {i}"}], "max_tokens": 8},
        }
        for i in range(n)
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def run_job(svc: Services, data: bytes, tenant: str = "default", lie: list[str] | None = None, **reuse: Any) -> Job:
    """Submit, prepare, run what needs the engine, and finalize: the task chain, in
    process. `lie` overwrites the job's reuse sources after submit checked them."""
    job = submit_job(svc, tenant=tenant, model=MODEL, upload=BytesIO(data), enqueue=lambda _: None, **reuse)
    if lie is not None:
        svc.jobs.update(job.id, reuse_from=lie)
    manifest = prepare_job(svc, job.id)
    assert manifest is not None
    assert svc.jobs.transition(job.id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    for index in finish_reused_shards(svc, manifest):
        run_shard(svc, job.id, index)
    return finalize_job(svc, job.id)


def results(svc: Services, job: Job) -> list[dict[str, Any]]:
    assert job.results_key
    return [orjson.loads(raw) for raw in svc.storage.get_bytes(job.results_key).splitlines()]


def test_a_rerun_is_answered_from_the_first_run_and_never_reaches_the_engine(services: Services) -> None:
    first = run_job(services, lines(10), metadata={"job_name": "nightly"})
    assert first.stats and (first.stats["reused"], first.stats["engine_requests"]) == (0, 10)

    second = run_job(services, lines(10), metadata={"job_name": "nightly"}, reuse="latest")

    assert second.reuse_from == [first.id]
    assert second.stats and (second.stats["reused"], second.stats["engine_requests"]) == (10, 0)
    assert (second.stats["successful"], second.stats["prompt_tokens"], second.stats["engine_seconds"]) == (10, 0, 0)
    old, new = results(services, first), results(services, second)
    assert [line["custom_id"] for line in new] == [line["custom_id"] for line in old]
    for a, b in zip(old, new, strict=True):
        assert b["reused_from"] == first.id and b["fingerprint"] == a["fingerprint"]
        assert b["response"]["body"] == a["response"]["body"]
        assert b["id"] != a["id"] and b["response"]["request_id"] != a["response"]["request_id"]  # this job's ids


def test_changed_lines_run_and_the_rest_is_reused_in_input_order(services: Services) -> None:
    first = run_job(services, lines(10))
    changed = b"".join(
        raw if i % 3 else raw.replace(b"score", b"rescore") for i, raw in enumerate(lines(10).splitlines(keepends=True))
    )
    second = run_job(services, changed, reuse_from=[first.id])
    assert second.stats and (second.stats["reused"], second.stats["engine_requests"]) == (6, 4)
    out = results(services, second)
    assert [line["custom_id"] for line in out] == [f"c{i}" for i in range(10)]
    assert [bool(line.get("reused_from")) for line in out] == [bool(i % 3) for i in range(10)]


def test_force_and_changed_sampling_reuse_nothing(services: Services) -> None:
    first = run_job(services, lines(4), metadata={"job_name": "n"})
    forced = run_job(services, lines(4), metadata={"job_name": "n"}, reuse="latest", force=True)
    assert forced.reuse_from is None and forced.stats and forced.stats["reused"] == 0
    hotter = lines(4).replace(b'"max_tokens":8', b'"max_tokens":9')
    other = run_job(services, hotter, reuse_from=[first.id])
    assert other.stats and (other.stats["reused"], other.stats["engine_requests"]) == (0, 4)


def test_errors_are_never_reused(services: Services) -> None:
    first = run_job(services, lines(4))
    assert first.results_key
    # As if the engine had failed c1: its line is in the errors file, not the results.
    kept = [raw for raw in services.storage.get_bytes(first.results_key).splitlines() if b'"c1"' not in raw]
    services.storage.put_bytes(first.results_key, b"\n".join(kept) + b"\n", "application/jsonl")
    second = run_job(services, lines(4), reuse_from=[first.id])
    assert second.stats and (second.stats["reused"], second.stats["engine_requests"]) == (3, 1)


def test_reuse_never_crosses_tenants(services: Services) -> None:
    theirs = run_job(services, lines(4), tenant="acme", metadata={"job_name": "nightly"})
    with pytest.raises(ServiceError) as refused:
        run_job(services, lines(4), reuse_from=[theirs.id])
    assert refused.value.details["fields"]["reuse_from"] == [f"no job {theirs.id!r}"]
    # "latest" looks at the tenant's own jobs only: ours has no earlier run.
    ours = run_job(services, lines(4), metadata={"job_name": "nightly"}, reuse="latest")
    assert ours.reuse_from is None and ours.stats and ours.stats["reused"] == 0
    # And a record that names another tenant's job is not read at prepare either.
    lied = run_job(services, lines(4), lie=[theirs.id])
    assert lied.stats and (lied.stats["reused"], lied.stats["engine_requests"]) == (0, 4)


def test_reuse_latest_needs_a_job_name(services: Services) -> None:
    with pytest.raises(ServiceError) as refused:
        run_job(services, lines(2), reuse="latest")
    assert "job_name" in refused.value.message


def test_the_cost_report_rates_what_the_engine_ran(services: Services) -> None:
    priced = dataclasses.replace(services.models.get(MODEL), gpu_hour_price=3.6)
    services.models._specs[MODEL] = priced  # the test catalogue's instant model has no price
    first = run_job(services, lines(8), metadata={"job_name": "n"})
    run_job(services, lines(8), metadata={"job_name": "n"}, reuse="latest")
    assert first.stats
    seconds = first.stats["engine_seconds"]
    [row] = cost_report(services, "default")
    assert (row["model"], row["jobs"], row["requests"], row["reused"]) == (MODEL, 2, 8, 8)
    assert row["cost"] == pytest.approx(seconds / 3600 * 3.6, abs=1e-5)
    if seconds:
        assert row["req_per_sec"] == pytest.approx(8 / seconds, rel=0.01)
    assert cost_report(services, "default", since=first.created_at + 3600) == []
    assert cost_report(services, "acme") == []
