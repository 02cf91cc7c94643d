"""Retention on real Redis and local storage: past retention_s a finished job's
objects go, its record stays, and its results answer 410."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask

from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.retention import expire_job_data
from batchsvc.pipeline.shards import run_shard
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.store.jobs import JobStatus
from tests.support.client import error_of, upload

LINE = orjson.dumps(
    {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
)


def finished_job(app: Flask) -> str:
    svc: Services = app.extensions["batchsvc"]
    job_id = upload(app.test_client(), LINE, "instant-test").get_json()["job_id"]
    manifest = prepare_job(svc, job_id)
    assert manifest is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    run_shard(svc, job_id, 0)
    assert finalize_job(svc, job_id).status is JobStatus.COMPLETED
    return job_id


def test_past_retention_the_objects_go_the_record_stays_and_results_are_410(make_app: Any) -> None:
    app = make_app(retention_s=3600)
    svc: Services = app.extensions["batchsvc"]
    client = app.test_client()
    job_id = finished_job(app)
    finished = svc.jobs.get(job_id).finished_at
    assert finished is not None
    assert client.get(f"/v1/batch/{job_id}/results").status_code == 200

    assert expire_job_data(svc, now=finished + 3599) == []  # not yet
    assert list(svc.storage.list(layout.job_prefix(layout.JobKey("default", job_id))))

    assert expire_job_data(svc, now=finished + 3601) == [job_id]
    assert list(svc.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))) == []
    view = client.get(f"/v1/batch/{job_id}").get_json()
    assert view["status"] == "completed" and view["progress"]["completed"] == 1  # the record stays
    assert view["data_expired_at"]
    error = error_of(client.get(f"/v1/batch/{job_id}/results"), 410, "gone")
    assert "retention" in error["message"]
    assert expire_job_data(svc, now=finished + 7200) == []  # once


def test_a_job_still_running_keeps_its_data(make_app: Any) -> None:
    app = make_app(retention_s=0)
    svc: Services = app.extensions["batchsvc"]
    job_id = upload(app.test_client(), LINE, "instant-test").get_json()["job_id"]
    assert prepare_job(svc, job_id) is not None
    assert expire_job_data(svc, now=svc.jobs.get(job_id).created_at + 10**6) == []
    assert list(svc.storage.list(layout.job_prefix(layout.JobKey("default", job_id))))
