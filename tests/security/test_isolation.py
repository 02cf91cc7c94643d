"""Tenant isolation: a key sees only its own tenant's jobs and files. Another
tenant's id answers exactly as an id that does not exist, and each tenant's
objects live under its own storage prefix."""

from __future__ import annotations

import io
import time
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from batchsvc.access import Role
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import run_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from batchsvc.store.jobs import JobStatus
from tests.support.client import client_of, upload

LINE = orjson.dumps(
    {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
)
MISSING_JOB = "batch_" + "f" * 32
MISSING_FILE = "file-" + "f" * 24


def run_job(svc: Services, job_id: str) -> None:
    assert prepare_job(svc, job_id) is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    run_shard(svc, job_id, 0)
    assert finalize_job(svc, job_id).status is JobStatus.COMPLETED


@pytest.fixture
def tenants(app: Flask) -> dict[str, Any]:
    """Tenant a with a finished job and an uploaded file; tenant b with nothing."""
    a, b = client_of(app, "a"), client_of(app, "b")
    job_id = upload(a, LINE, "instant-test").get_json()["job_id"]
    run_job(app.extensions["batchsvc"], job_id)
    uploaded = a.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(LINE + b"\n"), "in.jsonl")})
    return {"a": a, "b": b, "job_id": job_id, "file_id": uploaded.get_json()["id"]}


JOB_CALLS = [
    ("get", "/v1/batch/{}"),
    ("get", "/v1/batch/{}/results"),
    ("get", "/v1/batch/{}/partial"),
    ("post", "/v1/batch/{}/cancel"),
    ("post", "/v1/batch/{}/retry"),
    ("post", "/v1/batch/{}/retry?scope=failed_requests"),
    ("get", "/v1/batches/{}"),
    ("post", "/v1/batches/{}/cancel"),
]
FILE_CALLS = [
    ("get", "/v1/files/{}"),
    ("get", "/v1/files/{}/content"),
    ("delete", "/v1/files/{}"),
]


def same_as_missing(client: FlaskClient, method: str, path: str, real_id: str, missing_id: str) -> None:
    theirs = getattr(client, method)(path.format(real_id))
    missing = getattr(client, method)(path.format(missing_id))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_data(as_text=True) == missing.get_data(as_text=True).replace(missing_id, real_id)

    def headers(response: TestResponse) -> dict[str, str]:  # less the rate limit's running count
        return {k: v for k, v in response.headers.items() if not k.startswith("X-RateLimit-Remaining")}

    assert headers(theirs) == headers(missing)


@pytest.mark.parametrize(("method", "path"), JOB_CALLS, ids=[f"{m} {p}" for m, p in JOB_CALLS])
def test_another_tenants_job_answers_like_a_missing_one(tenants: dict[str, Any], method: str, path: str) -> None:
    same_as_missing(tenants["b"], method, path, tenants["job_id"], MISSING_JOB)
    assert tenants["a"].get(f"/v1/batch/{tenants['job_id']}").status_code == 200  # still there, still a's


@pytest.mark.parametrize(("method", "path"), FILE_CALLS, ids=[f"{m} {p}" for m, p in FILE_CALLS])
def test_another_tenants_file_answers_like_a_missing_one(tenants: dict[str, Any], method: str, path: str) -> None:
    same_as_missing(tenants["b"], method, path, tenants["file_id"], MISSING_FILE)
    assert tenants["a"].get(f"/v1/files/{tenants['file_id']}").status_code == 200


def test_another_tenants_output_file_answers_like_a_missing_one(tenants: dict[str, Any]) -> None:
    output_file = tenants["a"].get(f"/v1/batches/{tenants['job_id']}").get_json()["output_file_id"]
    same_as_missing(tenants["b"], "get", "/v1/files/{}/content", output_file, MISSING_FILE)


@pytest.mark.parametrize("job_id", ["%2E%2E", "..", "batch_x%2Fy", "batch_" + "0" * 31 + "Z"])
def test_a_retry_of_an_id_that_is_not_a_job_id_is_a_plain_404(tenants: dict[str, Any], job_id: str) -> None:
    response = tenants["a"].post(f"/v1/batch/{job_id}/retry")
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "not_found"


def test_a_batch_cannot_be_made_of_another_tenants_file(tenants: dict[str, Any]) -> None:
    body = {"input_file_id": tenants["file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    theirs = tenants["b"].post("/v1/batches", json=body)
    missing = tenants["b"].post("/v1/batches", json={**body, "input_file_id": MISSING_FILE})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json() == orjson.loads(
        missing.get_data().replace(MISSING_FILE.encode(), tenants["file_id"].encode())
    )


def test_lists_hold_only_the_tenants_own_and_an_admin_sees_all(app: Flask, tenants: dict[str, Any]) -> None:
    b_job = upload(tenants["b"], LINE, "instant-test").get_json()["job_id"]

    def ids(client: FlaskClient, path: str, field: str) -> set[str]:
        return {item[field] for item in client.get(path).get_json()["data"]}

    assert ids(tenants["a"], "/v1/batch", "job_id") == {tenants["job_id"]}
    assert ids(tenants["b"], "/v1/batch", "job_id") == {b_job}
    assert ids(tenants["b"], "/v1/batches", "id") == {b_job}
    assert ids(tenants["b"], "/v1/files", "id") == set()
    assert tenants["file_id"] in ids(tenants["a"], "/v1/files", "id")
    # A cursor from another tenant's list is a missing id too.
    assert tenants["b"].get(f"/v1/batch?after={tenants['job_id']}").status_code == 404

    admin = client_of(app, "ops", Role.ADMIN)
    assert ids(admin, "/v1/batch", "job_id") == {tenants["job_id"], b_job}
    assert admin.get(f"/v1/batch/{tenants['job_id']}").status_code == 200


def test_each_tenants_objects_live_under_its_own_prefix(app: Flask, tenants: dict[str, Any]) -> None:
    storage = app.extensions["batchsvc"].storage
    b_job = upload(tenants["b"], LINE, "instant-test").get_json()["job_id"]
    a_keys = [o.key for o in storage.list("tenants/a/")]
    b_keys = [o.key for o in storage.list("tenants/b/")]
    assert f"tenants/a/jobs/{tenants['job_id']}/results.jsonl" in a_keys
    assert f"tenants/a/files/{tenants['file_id']}" in a_keys
    assert b_keys == [f"tenants/b/jobs/{b_job}/input.jsonl", f"tenants/b/jobs/{b_job}/job.json"]
    everything = [o.key for o in storage.list("")]
    assert all(k.startswith("tenants/") for k in everything if not k.startswith(".")), everything
    assert layout.job_prefix(layout.JobKey("a", tenants["job_id"])) == f"tenants/a/jobs/{tenants['job_id']}/"


def test_results_links_are_per_object_and_expire(app: Flask, tenants: dict[str, Any], make_app: Any) -> None:
    links = tenants["a"].get(f"/v1/batch/{tenants['job_id']}/results").get_json()
    assert links["expires_at"] is not None
    anonymous = app.test_client()
    anonymous.environ_base.pop("HTTP_AUTHORIZATION", None)
    download = anonymous.get(links["results_url"].split("127.0.0.1:8000", 1)[-1])
    assert download.status_code == 200  # the signed link is its own credential
    assert orjson.loads(download.get_data().splitlines()[0])["custom_id"] == "a"

    # The token names one object: changing it breaks the signature.
    token = links["results_url"].rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert anonymous.get(f"/v1/downloads/{tampered}").status_code == 403

    # Links expire (the default is an hour; here, a second).
    assert Settings().result_link_ttl_s == 3600 and Settings().retention_s == 7 * 24 * 3600
    short = client_of(make_app(result_link_ttl_s=1), "a")
    stale = short.get(f"/v1/batch/{tenants['job_id']}/results").get_json()["results_url"]
    time.sleep(2.1)  # expiry is rounded up to a whole second
    assert anonymous.get(stale.split("127.0.0.1:8000", 1)[-1]).status_code == 403
