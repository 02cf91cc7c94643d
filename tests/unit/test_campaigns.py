"""Campaign runs: one per entry and scheduled time, however many beats send it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchsvc.pipeline.campaigns import run_id, submit_run
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.store.jobs import Job, JobExists, JobStatus
from tasks.schedule import every, scheduled_slot

ENTRY = {
    "name": "nightly",
    "cron": "0 2 * * *",
    "model": "instant-test",
    "input_file_url": "http://127.0.0.1:9/in.jsonl",
}


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_slot_of_a_tick_is_its_scheduled_time_however_late_it_runs() -> None:
    assert scheduled_slot(ENTRY, ts("2026-12-02T02:00:00")) == ts("2026-12-02T02:00:00")
    assert scheduled_slot(ENTRY, ts("2026-12-02T05:17:31")) == ts("2026-12-02T02:00:00")
    assert scheduled_slot(ENTRY, ts("2026-12-02T01:59:59")) == ts("2026-12-01T02:00:00")
    assert scheduled_slot({"every": 10}, 1_000_007.5) == 1_000_000


def test_every_fires_at_the_multiples_of_its_period_in_every_beat() -> None:
    now = datetime.fromtimestamp(1_000_007.5, UTC)
    sched = every(10, nowfun=lambda: now)
    # Last run before this period's start: due; the next check is at the next multiple.
    state = sched.is_due(datetime.fromtimestamp(999_995, UTC))
    assert state.is_due and state.next == pytest.approx(2.5)
    assert not sched.is_due(datetime.fromtimestamp(1_000_001, UTC)).is_due


def test_a_tick_sent_twice_is_one_run(services: Services, tmp_path: Path) -> None:
    sent: list[str] = []
    slot = ts("2026-12-02T02:00:00")
    first = submit_run(services, ENTRY, slot, sent.append)
    again = submit_run(services, ENTRY, slot, sent.append)  # the second beat, or a restarted one
    assert first is not None and again is not None
    assert first.id == again.id == run_id("default", "nightly", slot) and sent == [first.id]
    assert first.metadata == {"job_name": "nightly", "priority": 3, "scheduled_for": "2026-12-02T02:00:00Z"}


def test_a_tick_while_the_last_run_is_active_is_skipped(services: Services) -> None:
    sent: list[str] = []
    first = submit_run(services, ENTRY, ts("2026-12-02T02:00:00"), sent.append)
    assert submit_run(services, ENTRY, ts("2026-12-03T02:00:00"), sent.append) is None
    assert first is not None
    services.jobs.transition(first.id, JobStatus.COMPLETED, expect={JobStatus.QUEUED})
    later = submit_run(services, ENTRY, ts("2026-12-03T02:00:00"), sent.append)
    assert later is not None and sent == [first.id, later.id]


def test_a_run_id_is_created_once_even_when_two_submissions_race(services: Services) -> None:
    job_id = run_id("default", "nightly", 1_000_000)
    sent: list[str] = []
    first = submit_job(services, tenant="default", model="instant-test", input_url=ENTRY["input_file_url"],
                       enqueue=sent.append, job_id=job_id)  # fmt: skip
    again = submit_job(services, tenant="default", model="instant-test", input_url=ENTRY["input_file_url"],
                       enqueue=sent.append, job_id=job_id)  # fmt: skip
    assert first.id == again.id == job_id and sent == [job_id]
    # Two that both passed the existence check: the store's create is the arbiter.
    with pytest.raises(JobExists):
        services.jobs.create(Job(id=job_id, model="instant-test"), if_absent=True)
