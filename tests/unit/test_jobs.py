"""The Redis job store (batchsvc.store.jobs) against a real Redis database."""

from __future__ import annotations

import re

import pytest

from batchsvc.errors import JobNotFound
from batchsvc.services import Services
from batchsvc.store.jobs import Counts, Job, JobStatus, JobStore, new_job_id

T0 = 1_700_000_000.25


@pytest.fixture
def store(services: Services) -> JobStore:
    return services.jobs


def make_job(store: JobStore, **fields: object) -> Job:
    job = Job(id=new_job_id(), model="instant-test", **fields)  # type: ignore[arg-type]
    return store.create(job)


# --- create / get ----------------------------------------------------------------


def test_job_ids_are_unguessable() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"batch_[0-9a-f]{32}", i) for i in ids)


def test_create_and_get_round_trip_every_field(store: JobStore) -> None:
    job = make_job(
        store,
        created_at=T0,
        input_url="https://example.com/in.jsonl",
        webhook_url="https://example.com/hook",
        metadata={"job_name": "nightly", "priority": 7, "nested": {"a": [1, 2]}},
        total=12,
        errors=[{"line": 3, "code": "invalid_json", "message": "bad", "param": None}],
        error_count=1,
        stats={"total": 12, "avg_response_time": 0.5},
    )
    got = store.get(job.id)
    assert got == job
    assert got.status is JobStatus.QUEUED
    assert got.metadata == {"job_name": "nightly", "priority": 7, "nested": {"a": [1, 2]}}
    assert got.created_at == T0


def test_none_fields_come_back_as_none(store: JobStore) -> None:
    job = make_job(store)
    got = store.get(job.id)
    for name in ("input_key", "input_url", "webhook_url", "started_at", "finished_at", "total", "stats"):
        assert getattr(got, name) is None, name
    assert got.metadata == {}
    assert got.errors == []


def test_get_of_an_unknown_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound) as info:
        store.get("batch_" + "0" * 32)
    assert info.value.type.status == 404
    assert info.value.details == {"job_id": "batch_" + "0" * 32}


def test_exists(store: JobStore) -> None:
    job = make_job(store)
    assert store.exists(job.id)
    assert not store.exists(new_job_id())


def test_update_sets_and_clears_fields(store: JobStore) -> None:
    job = make_job(store, webhook_url="https://example.com/hook")
    store.update(job.id, total=5, webhook_url=None, metadata={"job_name": "x"})
    got = store.get(job.id)
    assert (got.total, got.webhook_url, got.metadata) == (5, None, {"job_name": "x"})


# --- transition ------------------------------------------------------------------


def test_transition_moves_an_expected_status_and_sets_fields(store: JobStore) -> None:
    job = make_job(store)
    moved = store.transition(job.id, JobStatus.VALIDATING, expect={JobStatus.QUEUED}, validating_at=T0)
    assert moved is True
    got = store.get(job.id)
    assert got.status is JobStatus.VALIDATING
    assert got.validating_at == T0


def test_transition_refuses_an_unexpected_status_and_sets_nothing(store: JobStore) -> None:
    job = make_job(store)
    moved = store.transition(
        job.id, JobStatus.COMPLETED, expect={JobStatus.FINALIZING}, finished_at=T0, stats={"total": 1}
    )
    assert moved is False
    got = store.get(job.id)
    assert got.status is JobStatus.QUEUED
    assert got.finished_at is None
    assert got.stats is None


def test_transition_accepts_any_of_several_expected_statuses(store: JobStore) -> None:
    job = make_job(store, status=JobStatus.VALIDATING)
    assert store.transition(job.id, JobStatus.FAILED, expect={JobStatus.QUEUED, JobStatus.VALIDATING})
    assert store.get(job.id).status is JobStatus.FAILED


def test_a_terminal_job_cannot_be_moved_back(store: JobStore) -> None:
    job = make_job(store)
    assert store.transition(job.id, JobStatus.FAILED, expect={JobStatus.QUEUED})
    assert not store.transition(job.id, JobStatus.IN_PROGRESS, expect={JobStatus.QUEUED, JobStatus.VALIDATING})
    assert store.get(job.id).status is JobStatus.FAILED


def test_only_one_of_two_racing_transitions_wins(store: JobStore) -> None:
    job = make_job(store, status=JobStatus.VALIDATING)
    first = store.transition(job.id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING}, in_progress_at=T0)
    second = store.transition(job.id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING}, in_progress_at=T0 + 1)
    assert (first, second) == (True, False)
    assert store.get(job.id).in_progress_at == T0


def test_transition_can_store_none_and_lists(store: JobStore) -> None:
    job = make_job(store, estimated_completion=T0)
    errors = [{"line": 2, "code": "invalid_json", "message": "m", "param": None}]
    store.transition(job.id, JobStatus.FAILED, expect={JobStatus.QUEUED}, estimated_completion=None, errors=errors)
    got = store.get(job.id)
    assert got.estimated_completion is None
    assert got.errors == errors


def test_transition_of_an_unknown_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.transition(new_job_id(), JobStatus.VALIDATING, expect={JobStatus.QUEUED})


# --- progress --------------------------------------------------------------------


def test_counts_of_a_job_without_progress_are_zero(store: JobStore) -> None:
    assert store.counts(make_job(store).id) == Counts()


def test_counts_sum_every_shard(store: JobStore) -> None:
    job = make_job(store)
    store.record_shard_progress(job.id, 0, Counts(completed=3, failed=1, prompt_tokens=30, completion_tokens=9))
    store.record_shard_progress(job.id, 1, Counts(completed=2, failed=0, prompt_tokens=20, completion_tokens=6))
    store.record_shard_progress(job.id, 12, Counts(completed=0, failed=4, prompt_tokens=0, completion_tokens=0))
    assert store.counts(job.id) == Counts(completed=5, failed=5, prompt_tokens=50, completion_tokens=15)


def test_recording_a_shard_twice_does_not_double_count(store: JobStore) -> None:
    job = make_job(store)
    progress = Counts(completed=4, failed=1, prompt_tokens=40, completion_tokens=12)
    store.record_shard_progress(job.id, 0, progress)
    store.record_shard_progress(job.id, 0, progress)
    assert store.counts(job.id) == progress


def test_a_later_report_of_a_shard_replaces_its_earlier_one(store: JobStore) -> None:
    job = make_job(store)
    store.record_shard_progress(job.id, 0, Counts(completed=1))
    store.record_shard_progress(job.id, 1, Counts(completed=10))
    store.record_shard_progress(job.id, 0, Counts(completed=7, failed=2))
    assert store.counts(job.id) == Counts(completed=17, failed=2)


def test_progress_of_one_job_does_not_leak_into_another(store: JobStore) -> None:
    a, b = make_job(store), make_job(store)
    store.record_shard_progress(a.id, 0, Counts(completed=3))
    assert store.counts(b.id) == Counts()


# --- mark_started ----------------------------------------------------------------


def test_mark_started_keeps_the_first_time(store: JobStore) -> None:
    job = make_job(store)
    store.mark_started(job.id, T0)
    store.mark_started(job.id, T0 + 60)
    store.mark_started(job.id, T0 - 60)
    assert store.get(job.id).started_at == T0


def test_mark_started_on_a_missing_job_leaves_it_missing(store: JobStore) -> None:
    job_id = new_job_id()
    store.mark_started(job_id, T0)
    with pytest.raises(JobNotFound):
        store.get(job_id)


# --- listing ---------------------------------------------------------------------


def test_list_ids_is_newest_first(store: JobStore) -> None:
    ids = [make_job(store, created_at=T0 + i).id for i in range(5)]
    assert store.list_ids() == ids[::-1]


def test_list_ids_respects_the_limit(store: JobStore) -> None:
    ids = [make_job(store, created_at=T0 + i).id for i in range(5)]
    assert store.list_ids(limit=2) == [ids[4], ids[3]]


def test_list_ids_after_is_an_exclusive_cursor(store: JobStore) -> None:
    ids = [make_job(store, created_at=T0 + i).id for i in range(5)]
    assert store.list_ids(limit=2, after=ids[3]) == [ids[2], ids[1]]
    assert store.list_ids(after=ids[0]) == []


def test_list_ids_after_an_unknown_id_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.list_ids(after=new_job_id())


def test_list_ids_pages_through_every_job_once_even_with_equal_timestamps(store: JobStore) -> None:
    jobs = [make_job(store, created_at=T0 + (i // 3)) for i in range(7)]
    seen: list[str] = []
    after = None
    while page := store.list_ids(limit=2, after=after):
        seen += page
        after = page[-1]
    assert sorted(seen) == sorted(j.id for j in jobs)
    assert len(seen) == len(set(seen)) == 7


def test_list_ids_of_an_empty_store(store: JobStore) -> None:
    assert store.list_ids() == []


# --- model rates -----------------------------------------------------------------


def test_model_rate_round_trip(store: JobStore) -> None:
    assert store.model_rate("instant-test") is None
    store.record_model_rate("instant-test", 12.5)
    assert store.model_rate("instant-test") == 12.5
