"""The migration of data written before tenants existed: the old layout is built
by hand here (objects under jobs/{id}/ and files/{id}, records without a tenant),
then migrated, and then the job must behave like any other of its tenant."""

from __future__ import annotations

import io
from typing import Any

import orjson
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.migrate import migrate_to_tenant_layout
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.retention import expire_job_data
from batchsvc.pipeline.shards import run_shard
from batchsvc.services import Services
from batchsvc.store.jobs import JobStatus
from tests.support.client import upload

LINE = orjson.dumps(
    {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
)


def make_legacy(svc: Services, client: FlaskClient) -> tuple[str, str]:
    """A finished job and an uploaded file, as the code before tenants left them."""
    job_id = upload(client, LINE, "instant-test").get_json()["job_id"]
    assert prepare_job(svc, job_id) is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    run_shard(svc, job_id, 0)
    job = finalize_job(svc, job_id)
    file_id = client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(LINE), "in.jsonl")}).get_json()[
        "id"
    ]

    storage, state, p = svc.storage, svc.jobs.redis, svc.settings.redis_prefix
    new_prefix, old_prefix = f"tenants/default/jobs/{job_id}/", f"jobs/{job_id}/"
    for info in list(storage.list(new_prefix)):
        data = storage.get_bytes(info.key).replace(new_prefix.encode(), old_prefix.encode())
        storage.put_bytes(old_prefix + info.key[len(new_prefix) :], data)
        storage.delete(info.key)
    storage.put_bytes(f"files/{file_id}", storage.get_bytes(f"tenants/default/files/{file_id}"))
    storage.delete(f"tenants/default/files/{file_id}")
    for name in ("input_key", "results_key", "errors_key"):
        state.hset(f"{p}:job:{job_id}", name, orjson.dumps(getattr(job, name).replace(new_prefix, old_prefix)))
    state.hdel(f"{p}:job:{job_id}", "tenant")
    for record_id in (job.output_file_id, job.error_file_id, file_id):
        key = orjson.loads(state.hget(f"{p}:file:{record_id}", "key")).replace("tenants/default/", "")
        state.hset(f"{p}:file:{record_id}", "key", orjson.dumps(key))
        state.hdel(f"{p}:file:{record_id}", "tenant")
    state.delete(f"{p}:t:default:jobs", f"{p}:t:default:files", f"{p}:t:default:active")
    return job_id, file_id


def test_old_jobs_and_files_move_to_the_tenant_layout_and_work_again(app: Flask, client: FlaskClient) -> None:
    svc: Services = app.extensions["batchsvc"]
    job_id, file_id = make_legacy(svc, client)
    assert client.get("/v1/batch").get_json()["data"] == []  # the symptom: old jobs fell out of the lists
    before = sorted(o.key for o in svc.storage.list("") if not o.key.startswith("."))
    assert all(k.startswith(("jobs/", "files/")) for k in before)

    done = migrate_to_tenant_layout(svc)

    assert (done.jobs, done.files, done.objects) == (1, 3, len(before))
    after = sorted(o.key for o in svc.storage.list("") if not o.key.startswith("."))
    assert after == sorted("tenants/default/" + k for k in before)
    assert [j["job_id"] for j in client.get("/v1/batch").get_json()["data"]] == [job_id]
    assert file_id in {f["id"] for f in client.get("/v1/files").get_json()["data"]}
    assert client.get(f"/v1/files/{file_id}/content").get_data() == LINE
    summary = orjson.loads(svc.storage.get_bytes(f"tenants/default/jobs/{job_id}/shards/00000/summary.json"))
    assert summary["output_key"].startswith(f"tenants/default/jobs/{job_id}/shards/00000/")
    results = client.get(f"/v1/batch/{job_id}/results").get_json()
    download = client.get(results["results_url"].split("127.0.0.1:8000", 1)[-1])
    assert orjson.loads(download.get_data())["custom_id"] == "a"
    assert orjson.loads(svc.storage.get_bytes(f"tenants/default/jobs/{job_id}/job.json"))["tenant"] == "default"

    # Again: nothing left to do.
    assert migrate_to_tenant_layout(svc) == type(done)()

    # And retention reaches the moved data now.
    assert expire_job_data(svc, now=svc.jobs.get(job_id).finished_at + svc.settings.retention_s + 1) == [job_id]
    assert list(svc.storage.list(f"tenants/default/jobs/{job_id}/")) == []


def test_old_data_can_be_given_to_a_named_tenant(app: Flask, client: FlaskClient, make_app: Any) -> None:
    svc: Services = app.extensions["batchsvc"]
    job_id, _ = make_legacy(svc, client)
    migrate_to_tenant_layout(svc, "aris")
    assert svc.jobs.get(job_id).tenant == "aris"
    assert client.get(f"/v1/batch/{job_id}").status_code == 404  # no longer the default tenant's
    assert list(svc.storage.list(f"tenants/aris/jobs/{job_id}/"))
