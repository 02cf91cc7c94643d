"""Re-drive plans, stall detection and rebuilding a job Redis lost, on real Redis
and local storage with the instant engine (no workers: the functions are plain)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import orjson
import pytest

from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.recovery import plan_redrive, rebuild_job, redrive, stalled_jobs
from batchsvc.pipeline.shards import run_shard
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from batchsvc.store.jobs import JobStatus
from tasks.names import SWEEP
from tasks.schedule import beat_schedule
from tests.conftest import make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, shard_size=2)


def submitted(svc: Services, n: int = 5) -> str:
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"candidate {i}"}]},
            }
        )
        + b"\n"
        for i in range(n)
    )
    job = submit_job(svc, tenant="default", model="instant-test", upload=io.BytesIO(lines), enqueue=lambda _id: None)
    return job.id


def started(svc: Services) -> str:
    job_id = submitted(svc)
    assert prepare_job(svc, job_id) is not None  # 5 lines at shard_size 2: shards 0, 1, 2
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    return job_id


def forget(svc: Services, job_id: str) -> None:
    """What a Redis restart without persistence does to a job."""
    svc.jobs.redis.delete(f"{svc.jobs.prefix}:job:{job_id}", f"{svc.jobs.prefix}:job:{job_id}:progress")
    svc.jobs.redis.srem(f"{svc.jobs.prefix}:active", job_id)


def test_a_queued_job_needs_prepare(services: Services) -> None:
    job_id = submitted(services)
    assert plan_redrive(services, services.jobs.get(job_id)).step == "prepare"


def test_only_the_shards_without_a_summary_are_re_driven(services: Services) -> None:
    job_id = started(services)
    run_shard(services, job_id, 1)
    plan = plan_redrive(services, services.jobs.get(job_id))
    assert (plan.step, plan.shards) == ("shards", [0, 2])


def test_when_every_shard_is_done_only_finalize_is_re_driven(services: Services) -> None:
    job_id = started(services)
    for index in range(3):
        run_shard(services, job_id, index)
    assert plan_redrive(services, services.jobs.get(job_id)).step == "finalize"


def test_a_stalled_job_is_found_only_when_silent_and_its_queue_is_empty(services: Services) -> None:
    job_id = started(services)
    last = services.jobs.get(job_id).last_activity

    def found(now: float, depth: int) -> list[str]:
        return [j.id for j in stalled_jobs(services, now=now, stall_after_s=60, queue_depth=lambda _j: depth)]

    assert found(last + 30, 0) == []  # not silent long enough
    assert found(last + 61, 3) == []  # its shards are waiting behind other work
    assert found(last + 61, 0) == [job_id]


def test_at_the_shipped_stall_after_s_a_silent_job_is_re_driven_after_fifteen_minutes(services: Services) -> None:
    stall_after_s = Settings().stall_after_s
    assert stall_after_s == 900
    job_id = started(services)
    last = services.jobs.get(job_id).last_activity

    def found(now: float) -> list[str]:
        return [j.id for j in stalled_jobs(services, now=now, stall_after_s=stall_after_s, queue_depth=lambda _j: 0)]

    assert found(last + 899) == []
    assert found(last + 901) == [job_id]


def test_at_the_shipped_sweep_interval_beat_looks_for_stalled_jobs_every_minute() -> None:
    # tests/faults/test_infra_faults.py lowers sweep_interval_s to 2 s for CI time; as shipped
    # beat sends the sweep every 60 s, so a lost delivery is re-driven within 900 + 60 s.
    shipped = Settings()
    entry = beat_schedule(shipped)["sweep"]
    assert (entry["task"], entry["schedule"]) == (SWEEP, 60.0)
    assert entry["options"]["expires"] == shipped.sweep_interval_s  # a late sweep is skipped, not piled up


def test_redrive_sends_the_plan_and_restarts_the_stall_clock(services: Services) -> None:
    job_id = started(services)
    sent = []
    before = time.time()
    plan = redrive(services, job_id, sent.append)
    assert sent == [plan] and plan.step == "shards"
    assert services.jobs.get(job_id).last_activity >= before


def test_a_running_job_lost_by_redis_is_rebuilt_from_storage(services: Services) -> None:
    job_id = started(services)
    run_shard(services, job_id, 0)
    forget(services, job_id)

    job = rebuild_job(services, job_id, "default")
    assert job.status is JobStatus.IN_PROGRESS
    assert (job.total, job.shard_count, job.model) == (5, 3, "instant-test")
    assert services.jobs.counts(job_id).completed == 2  # shard 0's summary
    assert job_id in services.jobs.active_ids()
    assert plan_redrive(services, job).shards == [1, 2]


def test_a_finished_job_lost_by_redis_comes_back_finished(services: Services) -> None:
    job_id = started(services)
    for index in range(3):
        run_shard(services, job_id, index)
    finalize_job(services, job_id)
    forget(services, job_id)

    job = rebuild_job(services, job_id, "default")
    assert job.status is JobStatus.COMPLETED
    assert job.stats and job.stats["successful"] == 5
    assert job.results_key == layout.results_key(layout.JobKey("default", job_id))
    assert job_id not in services.jobs.active_ids()


def test_rebuilding_a_job_storage_never_saw_is_not_found(services: Services) -> None:
    from batchsvc.errors import JobNotFound

    with pytest.raises(JobNotFound):
        rebuild_job(services, "batch_" + "0" * 32, "default")
