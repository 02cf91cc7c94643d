"""The HTTP API through Flask's test client: real Redis for jobs and the broker (no worker consumes the
queue), local storage under tmp_path. Jobs are driven to completion by calling the core directly."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
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
from batchsvc.store.jobs import Counts, Job, JobStatus, new_job_id
from tasks.names import PREPARE, celery_priority, queue_keys
from tests.support.client import error_of, grant
from tests.support.client import upload as post_upload
from tests.support.metrics import metric_value

MODEL = "instant-test"
JOB_ID_RE = re.compile(r"batch_[0-9a-f]{32}")
ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
STATUS_KEYS = {
    "job_id",
    "status",
    "model",
    "progress",
    "throughput",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "estimated_completion",
    "metadata",
    "usage",
    "reused",
    "engine_seconds",
    "cost",
    "reuse_from",
    "reproducibility",
}
T0 = 1_700_000_000.5


def jsonl(custom_ids: list[str]) -> bytes:
    lines = [
        {
            "custom_id": c,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"rate candidate {c}"}], "max_tokens": 8},
        }
        for c in custom_ids
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload(client: FlaskClient, data: bytes, **fields: Any) -> TestResponse:
    return post_upload(client, data, fields.pop("model", MODEL), **fields)


def submit_url(client: FlaskClient, **fields: Any) -> TestResponse:
    body = {"model": MODEL, "input_file_url": "https://files.example.com/in.jsonl", **fields}
    return client.post("/v1/batch", json=body)


def named_fields(error: dict[str, Any]) -> set[str]:
    # Schema errors name fields under details.fields; the core names one under details.field.
    details = error["details"]
    names = set(details.get("fields") or {})
    if "field" in details:
        names.add(details["field"])
    return names


def complete(app: Flask, job_id: str) -> Job:
    """What the worker would do, run in-process on the app's own services."""
    svc: Services = app.extensions["batchsvc"]
    manifest = prepare_job(svc, job_id)
    assert manifest is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    for shard in manifest.shards:
        run_shard(svc, job_id, shard.index)
    return finalize_job(svc, job_id)


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        return [orjson.loads(raw) for key in queue_keys(settings.cpu_queue) for raw in broker.lrange(key, 0, -1)]
    finally:
        broker.close()


# --- submission errors -----------------------------------------------------------


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/v1/batch", data=b'{"model": "instant-test",', content_type="application/json")
    error_of(response, 400, "invalid_request")


def test_a_json_body_that_is_not_an_object_is_400(client: FlaskClient) -> None:
    error_of(client.post("/v1/batch", json=["instant-test"]), 400, "invalid_request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_other_content_types_are_415(client: FlaskClient, content_type: str | None) -> None:
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post("/v1/batch", data=b"model=instant-test", **kwargs)
    error_of(response, 415, "unsupported_media_type")


def test_unknown_model_is_422_naming_the_model_field(client: FlaskClient) -> None:
    error = error_of(submit_url(client, model="gpt-17"), 422, "validation_error")
    assert named_fields(error) == {"model"}
    assert "gpt-17" in error["message"]


def test_unknown_model_in_an_upload_is_422_and_stores_nothing(client: FlaskClient, services: Services) -> None:
    error = error_of(upload(client, jsonl(["a"]), model="gpt-17"), 422, "validation_error")
    assert named_fields(error) == {"model"}
    assert list(services.storage.list("tenants/")) == []
    assert services.jobs.list_ids() == []


def test_missing_model_is_422(client: FlaskClient) -> None:
    response = client.post("/v1/batch", json={"input_file_url": "https://example.com/in.jsonl"})
    assert named_fields(error_of(response, 422, "validation_error")) == {"model"}


def test_missing_input_file_url_is_422(client: FlaskClient) -> None:
    response = client.post("/v1/batch", json={"model": MODEL})
    assert named_fields(error_of(response, 422, "validation_error")) == {"input_file_url"}


@pytest.mark.parametrize("url", ["ftp://example.com/in.jsonl", "file:///etc/passwd", "not a url"])
def test_input_file_url_must_be_http(client: FlaskClient, url: str) -> None:
    error = error_of(submit_url(client, input_file_url=url), 422, "validation_error")
    assert named_fields(error) == {"input_file_url"}


def test_webhook_url_must_be_http(client: FlaskClient) -> None:
    error = error_of(submit_url(client, webhook_url="ftp://example.com/hook"), 422, "validation_error")
    assert named_fields(error) == {"webhook_url"}


def test_unknown_field_is_422(client: FlaskClient) -> None:
    error = error_of(submit_url(client, temperature=0.2), 422, "validation_error")
    assert named_fields(error) == {"temperature"}


@pytest.mark.parametrize("priority", [-1, 10, "urgent", "", True, 3.5, None])
def test_metadata_priority_out_of_range_is_422(client: FlaskClient, priority: Any) -> None:
    error = error_of(submit_url(client, metadata={"priority": priority}), 422, "validation_error")
    assert named_fields(error) == {"metadata"}
    assert "priority" in error["details"]["fields"]["metadata"]


# The seed design's own example of a submission, as a client written against it sends it.
SEED_METADATA = {"job_name": "candidate-scoring-2026-01", "priority": "normal"}


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_the_seeds_submit_body_with_priority_normal_is_accepted(
    client: FlaskClient, services: Services, settings: Settings, form: str
) -> None:
    if form == "json":
        response = client.post(
            "/v1/batch",
            json={
                "model": MODEL,
                "input_file_url": "https://files.example.com/candidates.jsonl",
                "webhook_url": "https://hooks.example.com/batch-complete",
                "metadata": SEED_METADATA,
            },
        )
    else:
        response = upload(client, jsonl(["a"]), metadata=orjson.dumps(SEED_METADATA).decode())
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    # The job reports the priority in the client's words; the queue gets the number.
    assert services.jobs.get(job_id).metadata == SEED_METADATA
    assert client.get(f"/v1/batch/{job_id}").get_json()["metadata"] == SEED_METADATA
    [message] = queued_messages(settings)
    assert message["properties"]["priority"] == celery_priority(5)


@pytest.mark.parametrize(("sent", "number"), [("high", 8), ("normal", 5), ("low", 2), ("HIGH", 8), (0, 0), (9, 9)])
def test_priority_words_and_numbers_set_the_queue_priority(
    client: FlaskClient, settings: Settings, sent: Any, number: int
) -> None:
    response = submit_url(client, metadata={"priority": sent})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["job_id"]
    [message] = queued_messages(settings)
    assert message["properties"]["priority"] == celery_priority(number)


def test_unknown_metadata_field_is_422(client: FlaskClient) -> None:
    error = error_of(submit_url(client, metadata={"owner": "aris"}), 422, "validation_error")
    assert "owner" in error["details"]["fields"]["metadata"]


def test_multipart_without_a_file_is_422(client: FlaskClient) -> None:
    response = client.post("/v1/batch", data={"model": MODEL}, content_type="multipart/form-data")
    assert named_fields(error_of(response, 422, "validation_error")) == {"file"}


def test_multipart_with_both_a_file_and_a_url_is_422(client: FlaskClient) -> None:
    response = upload(client, jsonl(["a"]), input_file_url="https://example.com/in.jsonl")
    assert named_fields(error_of(response, 422, "validation_error")) == {"input_file_url"}


def test_multipart_metadata_that_is_not_json_is_422(client: FlaskClient) -> None:
    response = upload(client, jsonl(["a"]), metadata="{priority: 3")
    assert named_fields(error_of(response, 422, "validation_error")) == {"metadata"}


def test_an_upload_over_max_file_bytes_is_413_and_leaves_nothing(make_app: Any, services: Services) -> None:
    client = make_app(max_file_bytes=1000).test_client()
    data = jsonl([f"req-{i}" for i in range(40)])
    assert 1000 < len(data) < 1024 * 1024  # under the form limit: the streaming check must catch it

    error = error_of(upload(client, data), 413, "payload_too_large")

    assert error["details"]["limit"] == "max_file_bytes"
    assert services.jobs.list_ids() == []
    assert list(services.storage.list("tenants/")) == []


def test_a_request_over_the_form_limit_is_413_json(make_app: Any) -> None:
    client = make_app(max_file_bytes=1000).test_client()
    error_of(upload(client, b"x" * (1000 + 1024 * 1024 + 1)), 413, "payload_too_large")


# --- other errors ----------------------------------------------------------------


def test_unknown_job_is_404(client: FlaskClient) -> None:
    job_id = new_job_id()
    error = error_of(client.get(f"/v1/batch/{job_id}"), 404, "not_found")
    assert error["details"] == {"job_id": job_id}


def test_results_of_an_unknown_job_are_404(client: FlaskClient) -> None:
    error_of(client.get(f"/v1/batch/{new_job_id()}/results"), 404, "not_found")


@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v1/batch/x/y/z"])
def test_unknown_paths_are_404_json_not_html(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    error_of(response, 404, "not_found")
    assert b"<html" not in response.data.lower()


@pytest.mark.parametrize(("method", "path"), [("delete", "/v1/batch"), ("put", "/v1/batch/x"), ("post", "/healthz")])
def test_a_wrong_method_is_405_json(client: FlaskClient, method: str, path: str) -> None:
    error_of(getattr(client, method)(path), 405, "method_not_allowed")


def test_a_405_says_which_methods_are_allowed(client: FlaskClient) -> None:
    response = client.delete("/v1/batch")
    assert response.status_code == 405
    assert set(response.headers.get("Allow", "").replace(" ", "").split(",")) >= {"GET", "POST"}


def test_results_of_a_queued_job_are_409(client: FlaskClient) -> None:
    job_id = upload(client, jsonl(["a"])).get_json()["job_id"]
    error = error_of(client.get(f"/v1/batch/{job_id}/results"), 409, "conflict")
    assert error["details"] == {"job_id": job_id, "status": "queued"}


def test_results_of_a_failed_job_are_409_with_its_errors(app: Flask, client: FlaskClient) -> None:
    job_id = upload(client, b'{"custom_id": "a"}\n').get_json()["job_id"]
    assert prepare_job(app.extensions["batchsvc"], job_id) is None
    error = error_of(client.get(f"/v1/batch/{job_id}/results"), 409, "conflict")
    assert error["details"]["status"] == "failed"
    assert [e["line"] for e in error["details"]["errors"]] == [1]


def test_an_unexpected_error_is_a_500_envelope_without_a_traceback(client: FlaskClient, services: Services) -> None:
    job_id = new_job_id()
    # A job hash the code cannot read (an unknown status): the view raises something unplanned.
    services.jobs.redis.hset(f"{services.jobs.prefix}:job:{job_id}", mapping={"status": b'"bogus"'})
    error = error_of(client.get(f"/v1/batch/{job_id}"), 500, "internal_error")
    assert error["message"] == "internal error"


# --- submission ------------------------------------------------------------------


def test_an_upload_is_accepted_and_queued(client: FlaskClient, settings: Settings) -> None:
    response = upload(client, jsonl(["a", "b", "c"]), metadata={"job_name": "screening"})

    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"job_id", "status", "created_at", "estimated_completion"}
    assert JOB_ID_RE.fullmatch(body["job_id"])
    assert body["status"] == "queued"
    assert ISO_RE.fullmatch(body["created_at"])
    assert ISO_RE.fullmatch(body["estimated_completion"])  # known: the upload's lines were counted

    [message] = queued_messages(settings)
    assert message["headers"]["task"] == PREPARE
    args, kwargs, _ = orjson.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([body["job_id"]], {})


def test_a_url_submission_is_accepted_with_no_estimate_yet(client: FlaskClient, services: Services) -> None:
    response = submit_url(client, webhook_url="https://hooks.example.com/done", metadata={"priority": 9})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["estimated_completion"] is None  # the number of requests is unknown until the fetch
    job = services.jobs.get(body["job_id"])
    assert job.input_url == "https://files.example.com/in.jsonl"
    assert job.webhook_url == "https://hooks.example.com/done"
    assert job.metadata == {"priority": 9}


def test_an_upload_is_stored_under_the_jobs_input_key(client: FlaskClient, services: Services) -> None:
    data = jsonl(["a", "b"])
    job_id = upload(client, data).get_json()["job_id"]
    job = services.jobs.get(job_id)
    assert job.input_key == layout.input_key(layout.JobKey("default", job_id))
    assert services.storage.get_bytes(job.input_key) == data
    assert job.total == 2


def test_two_submissions_get_different_ids(client: FlaskClient) -> None:
    first = upload(client, jsonl(["a"])).get_json()["job_id"]
    second = upload(client, jsonl(["a"])).get_json()["job_id"]
    assert first != second


def test_a_queued_job_has_the_status_shape(client: FlaskClient) -> None:
    job_id = upload(client, jsonl(["a", "b", "c"]), metadata={"job_name": "screening"}).get_json()["job_id"]

    response = client.get(f"/v1/batch/{job_id}")

    assert response.status_code == 200
    view = response.get_json()
    assert set(view) == STATUS_KEYS
    assert (view["job_id"], view["status"], view["model"]) == (job_id, "queued", MODEL)
    assert view["progress"] == {"completed": 0, "failed": 0, "total": 3, "percent": 0.0}
    assert view["throughput"] == {"req_per_sec": None, "tokens_per_sec": None, "estimated_remaining": None}
    assert ISO_RE.fullmatch(view["created_at"])
    assert view["started_at"] is None and view["finished_at"] is None
    assert ISO_RE.fullmatch(view["estimated_completion"])
    assert view["metadata"] == {"job_name": "screening", "priority": 5}


def test_a_running_job_shows_its_progress(client: FlaskClient, services: Services) -> None:
    job = services.jobs.create(Job(id=new_job_id(), model=MODEL, status=JobStatus.IN_PROGRESS, total=10))
    services.jobs.mark_started(job.id, job.created_at - 10)
    services.jobs.record_shard_progress(job.id, 0, Counts(completed=3, failed=1, completion_tokens=40))

    view = client.get(f"/v1/batch/{job.id}").get_json()

    assert view["status"] == "in_progress"
    assert view["progress"] == {"completed": 3, "failed": 1, "total": 10, "percent": 40.0}
    assert 0 < view["throughput"]["req_per_sec"] <= 0.4
    assert view["throughput"]["estimated_remaining"] >= 15
    assert ISO_RE.fullmatch(view["started_at"])
    assert ISO_RE.fullmatch(view["estimated_completion"])


def test_a_failed_job_shows_its_line_errors(app: Flask, client: FlaskClient) -> None:
    data = jsonl(["a", "b"]) + b"{oops\n"
    job_id = upload(client, data).get_json()["job_id"]
    prepare_job(app.extensions["batchsvc"], job_id)

    view = client.get(f"/v1/batch/{job_id}").get_json()

    assert view["status"] == "failed"
    assert [e["line"] for e in view["errors"]] == [3]
    assert view["error_count"] == 1
    assert view["estimated_completion"] is None
    assert ISO_RE.fullmatch(view["finished_at"])


# --- listing ---------------------------------------------------------------------


def _jobs_at(services: Services, n: int, step: float = 1.0) -> list[str]:
    return [services.jobs.create(Job(id=new_job_id(), model=MODEL, created_at=T0 + i * step)).id for i in range(n)]


def test_list_pages_newest_first(client: FlaskClient, services: Services) -> None:
    ids = _jobs_at(services, 5)[::-1]

    first = client.get("/v1/batch?limit=2").get_json()
    assert [j["job_id"] for j in first["data"]] == ids[0:2]
    assert (first["has_more"], first["last_id"]) == (True, ids[1])
    assert set(first["data"][0]) == STATUS_KEYS

    second = client.get(f"/v1/batch?limit=2&after={first['last_id']}").get_json()
    assert [j["job_id"] for j in second["data"]] == ids[2:4]
    assert second["has_more"] is True

    third = client.get(f"/v1/batch?limit=2&after={second['last_id']}").get_json()
    assert [j["job_id"] for j in third["data"]] == ids[4:5]
    assert (third["has_more"], third["last_id"]) == (False, ids[4])


@pytest.mark.parametrize(("path", "id_field"), [("/v1/batch", "job_id"), ("/v1/batches", "id")])
def test_a_page_with_a_vanished_record_reads_on_and_still_knows_more_follow(
    client: FlaskClient, services: Services, path: str, id_field: str
) -> None:
    """Both API shapes page alike: a record gone from under its index entry is
    skipped, the page is filled from further ids, and has_more sees what is left."""
    ids = _jobs_at(services, 4)[::-1]
    services.jobs.redis.delete(services.jobs._key(ids[1]))  # the record goes; its index entry stays

    first = client.get(f"{path}?limit=2").get_json()
    assert [j[id_field] for j in first["data"]] == [ids[0], ids[2]]
    assert first["has_more"] is True
    rest = client.get(f"{path}?limit=2&after={ids[2]}").get_json()
    assert [j[id_field] for j in rest["data"]] == [ids[3]]
    assert rest["has_more"] is False


def test_an_empty_list(client: FlaskClient) -> None:
    assert client.get("/v1/batch").get_json() == {"data": [], "has_more": False, "last_id": None}


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=many", "sort=asc"])
def test_bad_list_arguments_are_422(client: FlaskClient, query: str) -> None:
    error_of(client.get(f"/v1/batch?{query}"), 422, "validation_error")


def test_listing_after_an_unknown_job_is_404(client: FlaskClient) -> None:
    error_of(client.get(f"/v1/batch?after={new_job_id()}"), 404, "not_found")


def test_paging_never_skips_jobs_created_at_the_same_time(client: FlaskClient, services: Services) -> None:
    ids = set(_jobs_at(services, 3, step=0.0))
    seen: list[str] = []
    after = ""
    while True:
        page = client.get(f"/v1/batch?limit=1{after}").get_json()
        seen += [j["job_id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = f"&after={page['last_id']}"
    assert sorted(seen) == sorted(ids)


# --- a completed job and its downloads -------------------------------------------


def test_a_completed_job_has_results_links_that_serve_the_files(app: Flask, client: FlaskClient) -> None:
    ids = [f"cand-{i}" for i in range(5)]
    job_id = upload(client, jsonl(ids), metadata={"job_name": "screening"}).get_json()["job_id"]
    complete(app, job_id)

    view = client.get(f"/v1/batch/{job_id}").get_json()
    assert view["status"] == "completed"
    assert view["progress"] == {"completed": 5, "failed": 0, "total": 5, "percent": 100.0}
    assert view["throughput"]["estimated_remaining"] == 0
    assert view["estimated_completion"] is None
    assert ISO_RE.fullmatch(view["started_at"]) and ISO_RE.fullmatch(view["finished_at"])

    response = client.get(f"/v1/batch/{job_id}/results")
    assert response.status_code == 200
    results = response.get_json()
    assert set(results) == {"job_id", "status", "results_url", "errors_url", "expires_at", "stats"}
    assert (results["job_id"], results["status"]) == (job_id, "completed")
    assert ISO_RE.fullmatch(results["expires_at"])
    assert results["stats"]["total"] == 5 and results["stats"]["successful"] == 5
    assert results["results_url"].startswith(app.extensions["batchsvc"].settings.public_base_url + "/v1/downloads/")

    download = client.get(urlsplit(results["results_url"]).path)
    assert download.status_code == 200
    assert f"{job_id}-results.jsonl" in download.headers["Content-Disposition"]
    lines = [orjson.loads(raw) for raw in download.data.splitlines()]
    assert [line["custom_id"] for line in lines] == ids
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in lines)

    errors = client.get(urlsplit(results["errors_url"]).path)
    assert errors.status_code == 200
    assert errors.data == b""


def _token_path(url: str) -> tuple[str, str, str]:
    path = urlsplit(url).path
    prefix, token = path.rsplit("/", 1)
    payload, signature = token.split(".")
    return prefix, payload, signature


def test_a_tampered_download_link_is_403(app: Flask, client: FlaskClient) -> None:
    job_id = upload(client, jsonl(["a"])).get_json()["job_id"]
    complete(app, job_id)
    url = client.get(f"/v1/batch/{job_id}/results").get_json()["results_url"]
    prefix, payload, signature = _token_path(url)

    # Point the link at another object under the same signature.
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["k"] = layout.input_key(layout.JobKey("default", job_id))
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    error_of(client.get(f"{prefix}/{forged}.{signature}"), 403, "forbidden")

    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    error_of(client.get(f"{prefix}/{payload}.{flipped}"), 403, "forbidden")
    error_of(client.get(f"{prefix}/not-a-token"), 403, "forbidden")


def test_a_download_link_to_a_deleted_object_is_404(app: Flask, client: FlaskClient) -> None:
    job_id = upload(client, jsonl(["a"])).get_json()["job_id"]
    complete(app, job_id)
    url = client.get(f"/v1/batch/{job_id}/results").get_json()["results_url"]
    app.extensions["batchsvc"].storage.delete(layout.results_key(layout.JobKey("default", job_id)))
    error_of(client.get(urlsplit(url).path), 404, "not_found")


# --- health and metrics ----------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_redis(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"redis": True, "storage": True, "workers": True}}


def test_an_api_call_while_redis_is_down_is_a_503_envelope_with_retry_after(make_app: Any) -> None:
    client = make_app(state_redis_url="redis://127.0.0.1:1/0", role=None).test_client()
    response = client.get("/v1/batch", headers={"Authorization": "Bearer bsk_" + "x" * 43})
    assert error_of(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "5"


def test_readyz_is_503_when_redis_is_down(make_app: Any) -> None:
    client = make_app(state_redis_url="redis://127.0.0.1:1/0", role=None).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"redis": False, "storage": True, "workers": True}
    assert body["failed"] == {"redis": "redis: ConnectionError"}


def test_metrics_report_the_queue_depth(client: FlaskClient, settings: Settings) -> None:
    admin = {"Authorization": f"Bearer {grant(client.application, role=Role.ADMIN)}"}
    assert client.get("/metrics").status_code == 403  # they span every tenant: admins only
    before = client.get("/metrics", headers=admin)
    assert before.status_code == 200
    assert before.mimetype == "text/plain"
    assert f'batchsvc_queue_depth{{queue="{settings.cpu_queue}"}} 0.0' in before.get_data(as_text=True)
    assert f'batchsvc_queue_depth{{queue="{settings.llm_queue_prefix}.{MODEL}"}}' in before.get_data(as_text=True)

    submitted = metric_value(before.get_data(as_text=True), "batchsvc_jobs_submitted_total", model=MODEL)

    upload(client, jsonl(["a"]))
    upload(client, jsonl(["b"]))

    after = client.get("/metrics", headers=admin).get_data(as_text=True)
    assert f'batchsvc_queue_depth{{queue="{settings.cpu_queue}"}} 2.0' in after
    assert f'batchsvc_jobs_active{{model="{MODEL}",status="queued"}} 2.0' in after
    assert "batchsvc_jobs_stored 2.0" in after
    assert metric_value(after, "batchsvc_jobs_submitted_total", model=MODEL) == submitted + 2
    assert 'batchsvc_http_requests_total{method="POST",route="/v1/batch",status="202"}' in after


@pytest.mark.parametrize(
    ("field", "url"),
    [("input_file_url", "http://169.254.169.254/latest/meta-data"), ("webhook_url", "http://10.0.0.1/hook")],
)
def test_urls_the_ssrf_guard_refuses_are_422_at_submit(make_app: Any, services: Services, field: str, url: str) -> None:
    client = make_app(outbound_allowlist="").test_client()
    body = {"model": MODEL, "input_file_url": "https://files.example.com/in.jsonl", field: url}
    error = error_of(client.post("/v1/batch", json=body), 422, "validation_error")
    assert field in error["details"]["fields"]
    assert services.jobs.list_ids() == []


def test_retrying_only_the_failed_requests_makes_a_job_of_just_those(app: Flask, client: FlaskClient) -> None:
    from batchsvc.pipeline.shards import give_up_shard

    svc: Services = app.extensions["batchsvc"]
    data = jsonl(["a", "b", "c"])
    job_id = upload(client, data, metadata={"job_name": "nightly"}).get_json()["job_id"]
    manifest = prepare_job(svc, job_id)
    assert manifest is not None and len(manifest.shards) == 1
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    give_up_shard(svc, job_id, 0, "the engine kept crashing")  # all three become error lines
    assert finalize_job(svc, job_id).stats["failed"] == 3

    response = client.post(f"/v1/batch/{job_id}/retry?scope=failed_requests")
    assert response.status_code == 202, response.get_json()
    retry = response.get_json()
    assert (retry["retry_of"], retry["requests"]) == (job_id, 3)
    new = svc.jobs.get(retry["job_id"])
    assert new.metadata == {"job_name": "nightly", "priority": 5, "retry_of": job_id}
    assert svc.storage.get_bytes(new.input_key) == data  # the failed lines, as submitted

    completed = upload(client, jsonl(["d"])).get_json()["job_id"]
    complete(app, completed)
    error_of(client.post(f"/v1/batch/{completed}/retry?scope=failed_requests"), 409, "conflict")
