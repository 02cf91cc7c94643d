"""The one base class of the Celery tasks (tasks/base.py): every task gets the
shared delivery and retry options from it, and only prepare and finalize end
their job when they fail for good."""

from __future__ import annotations

import pytest

from batchsvc.services import Services
from batchsvc.store.jobs import Job, JobStatus, new_job_id
from tasks import base
from tasks.base import TRANSIENT, BatchTask
from tasks.batch import app
from tasks.names import FINALIZE, PREPARE

OURS = sorted(name for name in app.tasks if not name.startswith("celery."))


def test_every_task_is_a_batch_task_with_the_shared_delivery_and_retries() -> None:
    assert len(OURS) >= 10, OURS
    for name in OURS:
        task = app.tasks[name]
        assert isinstance(task, BatchTask), name
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), name
        assert tuple(task.autoretry_for) == TRANSIENT, name
        assert hasattr(task, "_orig_run"), f"{name}: autoretry did not wrap the task"
        assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (2, 300, True), name


def test_only_prepare_and_finalize_fail_their_job() -> None:
    assert {name for name in OURS if app.tasks[name].fails_job} == {PREPARE, FINALIZE}


@pytest.mark.parametrize("name", [PREPARE, FINALIZE])
def test_a_step_that_fails_for_good_fails_its_job(
    name: str, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "current_services", lambda: services)
    job = services.jobs.create(Job(id=new_job_id(), model="instant-test", status=JobStatus.VALIDATING))
    args = [job.id] if name == PREPARE else [[], job.id]
    app.tasks[name].on_failure(KeyError("x"), "task-id", args, {}, None)
    failed = services.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.errors[0]["code"] == "internal_error" and "KeyError" in failed.errors[0]["message"], failed.errors


def test_a_shard_that_fails_for_good_leaves_its_job_to_the_chord(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "current_services", lambda: services)
    job = services.jobs.create(Job(id=new_job_id(), model="instant-test", status=JobStatus.IN_PROGRESS))
    app.tasks["batch.shard"].on_failure(KeyError("x"), "task-id", [job.id, 0], {}, None)
    assert services.jobs.get(job.id).status is JobStatus.IN_PROGRESS
