"""The OpenAI-compatible Files and Batches API through Flask's test client, and
through the official `openai` client on a WSGI transport: real Redis for jobs and
the broker (no worker consumes the queue), local storage under tmp_path. Jobs are
driven to their end by calling the core directly, as the workers would."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import run_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from batchsvc.store.jobs import Job, JobStatus, new_job_id
from tasks.names import PREPARE, celery_priority, queue_keys
from tests.support.client import error_of, grant
from tests.support.client import upload as seed_upload

MODEL = "instant-test"
T0 = 1_700_000_000.5
FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details", "expires_at"}
BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "model",
    "usage",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "metadata",
}
FINISHED_AT = {"completed_at", "failed_at", "expired_at", "cancelled_at"}


@pytest.fixture
def oai(app: Flask) -> Iterator[openai.OpenAI]:
    """The official client, unchanged, talking to the app in-process with its own key."""
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app))
    key = grant(app)
    with openai.OpenAI(base_url="http://batchsvc.test/v1", api_key=key, http_client=http, max_retries=0) as c:
        yield c


def jsonl(custom_ids: list[str], model: str | None = MODEL, url: str = "/v1/chat/completions") -> bytes:
    lines = []
    for c in custom_ids:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": f"rate candidate {c}"}], "max_tokens": 8}
        if model is not None:
            body["model"] = model
        lines.append({"custom_id": c, "method": "POST", "url": url, "body": body})
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def post_file(
    client: FlaskClient, data: bytes | None, purpose: str | None = "batch", filename: str = "input.jsonl", **extra: Any
) -> TestResponse:
    form: dict[str, Any] = dict(extra)
    if purpose is not None:
        form["purpose"] = purpose
    if data is not None:
        form["file"] = FileStorage(io.BytesIO(data), filename, content_type="application/jsonl")
    boundary, body = encode_multipart(form)
    return client.post("/v1/files", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def upload_file(client: FlaskClient, data: bytes, **kwargs: Any) -> dict[str, Any]:
    response = post_file(client, data, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def create_batch(client: FlaskClient, input_file_id: str, **fields: Any) -> TestResponse:
    body = {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    return client.post("/v1/batches", json=body)


def new_batch(client: FlaskClient, data: bytes, **fields: Any) -> dict[str, Any]:
    response = create_batch(client, upload_file(client, data)["id"], **fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def fields_of(error: dict[str, Any]) -> set[str]:
    return set(error["details"].get("fields") or {})


def complete(app: Flask, job_id: str) -> Job:
    """What the workers would do, run in-process on the app's own services."""
    svc: Services = app.extensions["batchsvc"]
    manifest = prepare_job(svc, job_id)
    assert manifest is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING}, in_progress_at=T0)
    for shard in manifest.shards:
        run_shard(svc, job_id, shard.index)
    return finalize_job(svc, job_id)


def queued_prepares(settings: Settings) -> list[tuple[list[Any], int]]:
    """(args, priority) of each task message waiting on the CPU queue; all must be prepares."""
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        messages = [orjson.loads(raw) for key in queue_keys(settings.cpu_queue) for raw in broker.lrange(key, 0, -1)]
    finally:
        broker.close()
    assert all(m["headers"]["task"] == PREPARE for m in messages)
    return [(orjson.loads(base64.b64decode(m["body"]))[0], m["properties"]["priority"]) for m in messages]


# --- files -----------------------------------------------------------------------------


def test_a_file_round_trip(client: FlaskClient, services: Services) -> None:
    data = jsonl(["a", "b"])
    created = upload_file(client, data, filename="dir/candidates.jsonl")

    assert set(created) == FILE_KEYS
    assert created["id"].startswith("file-")
    assert (created["object"], created["purpose"], created["status"]) == ("file", "batch", "processed")
    assert (created["bytes"], created["filename"]) == (len(data), "candidates.jsonl")
    assert isinstance(created["created_at"], int)
    assert created["status_details"] is None and created["expires_at"] is None
    assert services.storage.get_bytes(layout.file_key("default", created["id"])) == data

    assert client.get(f"/v1/files/{created['id']}").get_json() == created
    listed = client.get("/v1/files").get_json()
    assert listed == {
        "object": "list",
        "data": [created],
        "first_id": created["id"],
        "last_id": created["id"],
        "has_more": False,
    }

    content = client.get(f"/v1/files/{created['id']}/content")
    assert content.status_code == 200
    assert content.mimetype == "application/jsonl"
    assert content.headers["Content-Length"] == str(len(data))
    assert content.data == data
    assert (
        content.headers["Content-Disposition"]
        == "attachment; filename=\"candidates.jsonl\"; filename*=UTF-8''candidates.jsonl"
    )

    deleted = client.delete(f"/v1/files/{created['id']}")
    assert deleted.get_json() == {"id": created["id"], "object": "file", "deleted": True}
    assert not services.storage.exists(layout.file_key("default", created["id"]))
    error_of(client.get(f"/v1/files/{created['id']}"), 404, "not_found")
    error_of(client.get(f"/v1/files/{created['id']}/content"), 404, "not_found")
    error_of(client.delete(f"/v1/files/{created['id']}"), 404, "not_found")
    assert client.get("/v1/files").get_json()["data"] == []


@pytest.mark.parametrize("purpose", ["fine-tune", "batch_output", "assistants", ""])
def test_only_purpose_batch_can_be_uploaded(client: FlaskClient, services: Services, purpose: str) -> None:
    error = error_of(post_file(client, jsonl(["a"]), purpose=purpose), 422, "validation_error")
    assert fields_of(error) == {"purpose"}
    assert list(services.storage.list("tenants/")) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"purpose": None}, "purpose"), ({"data": None}, "file"), ({"expires_after[seconds]": "3600"}, None)],
)
def test_upload_form_errors_name_the_field(client: FlaskClient, kwargs: dict[str, Any], field: str | None) -> None:
    args = {"data": jsonl(["a"]), **kwargs}
    error = error_of(post_file(client, args.pop("data"), **args), 422, "validation_error")
    assert fields_of(error) == {field or "expires_after[seconds]"}


def test_a_file_name_in_any_script_is_kept_and_served(client: FlaskClient) -> None:
    created = upload_file(client, b"", filename="uploads/候选人 2026.jsonl")
    assert (created["filename"], created["bytes"]) == ("候选人 2026.jsonl", 0)
    content = client.get(f"/v1/files/{created['id']}/content")
    assert content.status_code == 200 and content.data == b""
    assert "filename*=UTF-8''%E5%80%99" in content.headers["Content-Disposition"]


def test_an_upload_that_is_not_multipart_is_415(client: FlaskClient) -> None:
    error_of(client.post("/v1/files", json={"purpose": "batch"}), 415, "unsupported_media_type")


def test_an_upload_over_max_file_bytes_is_413_and_stores_nothing(make_app: Any, services: Services) -> None:
    client = make_app(max_file_bytes=1000).test_client()
    data = jsonl([f"req-{i}" for i in range(40)])
    assert 1000 < len(data) < 1024 * 1024  # under the form limit: the streaming cap must catch it

    error = error_of(post_file(client, data), 413, "payload_too_large")

    assert error["details"]["limit"] == "max_file_bytes"
    assert list(services.storage.list("tenants/")) == []
    assert services.files.list_ids() == []


def test_files_list_pages_newest_first_and_filters_by_purpose(
    app: Flask, client: FlaskClient, services: Services
) -> None:
    uploaded = [upload_file(client, jsonl([f"r{i}"]))["id"] for i in range(3)]
    # Same-second uploads: the index orders by created_at, so give them distinct times.
    for i, file_id in enumerate(uploaded):
        services.files.redis.zadd(f"{services.files.prefix}:files", {file_id: T0 + i})
    newest_first = uploaded[::-1]

    first = client.get("/v1/files?limit=2").get_json()
    assert [f["id"] for f in first["data"]] == newest_first[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (newest_first[0], newest_first[1], True)
    second = client.get(f"/v1/files?limit=2&after={first['last_id']}").get_json()
    assert [f["id"] for f in second["data"]] == newest_first[2:]
    assert second["has_more"] is False

    batch = new_batch(client, jsonl(["x", "y"]))
    job = complete(app, batch["id"])
    outputs = client.get("/v1/files?purpose=batch_output").get_json()["data"]
    assert {f["id"] for f in outputs} == {job.output_file_id, job.error_file_id}
    assert all(f["purpose"] == "batch_output" for f in outputs)
    inputs = client.get("/v1/files?purpose=batch&limit=100").get_json()["data"]
    assert set(uploaded) < {f["id"] for f in inputs}
    assert all(f["purpose"] == "batch" for f in inputs)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "purpose=fine-tune", "order=asc", "sort=x"])
def test_bad_file_list_arguments_are_422(client: FlaskClient, query: str) -> None:
    error_of(client.get(f"/v1/files?{query}"), 422, "validation_error")


def test_files_list_after_an_unknown_file_is_404(client: FlaskClient) -> None:
    error_of(client.get("/v1/files?after=file-000000000000000000000000"), 404, "not_found")


# --- batch creation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"completion_window": None}, "completion_window"),
        ({"completion_window": "1 day"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"n": 3}}, "metadata"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": {"priority": "urgent"}}, "metadata"),
        ({"metadata": {"priority": "10"}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, "output_expires_after"),
    ],
)
def test_batch_create_errors_name_the_field(
    client: FlaskClient, services: Services, fields: dict[str, Any], field: str
) -> None:
    file_id = upload_file(client, jsonl(["a"]))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    body = {k: v for k, v in body.items() if v is not None}

    error = error_of(client.post("/v1/batches", json=body), 422, "validation_error")

    assert fields_of(error) == {field}
    assert services.jobs.list_ids() == []


def test_metadata_may_hold_sixteen_string_pairs(client: FlaskClient) -> None:
    metadata = {f"key-{i}": "v" * 512 for i in range(15)} | {"model": MODEL}
    batch = new_batch(client, jsonl(["a"]), metadata=metadata)
    assert batch["metadata"] == metadata


def test_a_batch_needs_an_input_file_id(client: FlaskClient) -> None:
    response = client.post("/v1/batches", json={"endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert fields_of(error_of(response, 422, "validation_error")) == {"input_file_id"}


def test_a_batch_of_an_unknown_file_is_404(client: FlaskClient) -> None:
    error = error_of(create_batch(client, "file-000000000000000000000000"), 404, "not_found")
    assert error["details"] == {"file_id": "file-000000000000000000000000"}


def test_a_batch_body_that_is_not_a_json_object_is_400(client: FlaskClient) -> None:
    error_of(client.post("/v1/batches", json=["file-1"]), 400, "invalid_request")
    error_of(client.post("/v1/batches", data=b"{", content_type="application/json"), 400, "invalid_request")


def test_a_batch_cannot_read_an_output_file(app: Flask, client: FlaskClient) -> None:
    job = complete(app, new_batch(client, jsonl(["a"]))["id"])
    error = error_of(create_batch(client, job.output_file_id), 422, "validation_error")
    assert fields_of(error) == {"input_file_id"}


def test_an_unknown_model_is_422(client: FlaskClient, services: Services) -> None:
    file_id = upload_file(client, jsonl(["a"]))["id"]
    error = error_of(create_batch(client, file_id, metadata={"model": "gpt-17"}), 422, "validation_error")
    assert fields_of(error) == {"model"} and "gpt-17" in error["message"]

    from_line = upload_file(client, jsonl(["a"], model="gpt-18"))["id"]
    error = error_of(create_batch(client, from_line), 422, "validation_error")
    assert "gpt-18" in error["message"]
    assert services.jobs.list_ids() == []


@pytest.mark.parametrize("first_line", [jsonl(["a"], model=None), b"{not json\n", b"\n", b"[1, 2]\n"])
def test_no_model_anywhere_is_422_saying_where_to_put_it(client: FlaskClient, first_line: bytes) -> None:
    file_id = upload_file(client, first_line + jsonl(["b"]))["id"]
    error = error_of(create_batch(client, file_id), 422, "validation_error")
    assert "metadata.model" in error["message"]
    assert fields_of(error) == {"metadata"}


def test_the_model_comes_from_the_first_line_by_alias_or_by_what_it_loads(
    client: FlaskClient, services: Services
) -> None:
    assert new_batch(client, jsonl(["a"]))["model"] == MODEL
    loads = services.models.get(MODEL).model
    assert new_batch(client, jsonl(["a"], model=loads))["model"] == MODEL
    # metadata.model wins over the file (prepare then checks every line against it).
    assert new_batch(client, jsonl(["a"], model="other"), metadata={"model": MODEL})["model"] == MODEL


# --- the batch object --------------------------------------------------------------------


def test_a_new_batch_is_validating_and_queued_for_prepare(client: FlaskClient, settings: Settings) -> None:
    file_id = upload_file(client, jsonl(["a", "b", "c"]))["id"]
    response = create_batch(client, file_id, metadata={"job_name": "screening"})
    assert response.status_code == 200
    batch = response.get_json()

    assert set(batch) == BATCH_KEYS
    assert batch["id"].startswith("batch_")
    assert (batch["object"], batch["status"], batch["model"]) == ("batch", "validating", MODEL)
    assert (batch["endpoint"], batch["input_file_id"], batch["completion_window"]) == (
        "/v1/chat/completions",
        file_id,
        "24h",
    )
    assert isinstance(batch["created_at"], int)
    assert batch["expires_at"] - batch["created_at"] in (86399, 86400)
    assert batch["errors"] is None
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert all(batch[name] is None for name in FINISHED_AT | {"in_progress_at", "finalizing_at", "cancelling_at"})
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"job_name": "screening"}
    assert client.get(f"/v1/batches/{batch['id']}").get_json() == batch
    assert queued_prepares(settings) == [([batch["id"]], celery_priority(5))]


@pytest.mark.parametrize(("sent", "number"), [("8", 8), ("high", 8), ("normal", 5), ("low", 2)])
def test_metadata_priority_is_the_prepare_priority(
    client: FlaskClient, settings: Settings, sent: str, number: int
) -> None:
    batch = new_batch(client, jsonl(["a"]), metadata={"priority": sent})
    assert batch["metadata"] == {"priority": sent}  # as the client sent it
    assert queued_prepares(settings) == [([batch["id"]], celery_priority(number))]


def test_a_completed_batch_and_its_output_files(app: Flask, client: FlaskClient, services: Services) -> None:
    ids = [f"cand-{i}" for i in range(5)]
    batch_id = new_batch(client, jsonl(ids), completion_window="2h")["id"]
    complete(app, batch_id)

    batch = client.get(f"/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert batch["in_progress_at"] == int(T0)
    assert isinstance(batch["finalizing_at"], int) and isinstance(batch["completed_at"], int)
    assert batch["failed_at"] is batch["cancelled_at"] is batch["expired_at"] is None
    assert batch["expires_at"] - batch["created_at"] in (7199, 7200)

    output = client.get(f"/v1/files/{batch['output_file_id']}").get_json()
    assert (output["purpose"], output["filename"]) == ("batch_output", f"{batch_id}_output.jsonl")
    lines = [orjson.loads(raw) for raw in client.get(f"/v1/files/{output['id']}/content").data.splitlines()]
    assert [line["custom_id"] for line in lines] == ids
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in lines)
    assert client.get(f"/v1/files/{batch['error_file_id']}/content").data == b""

    # Deleting an output file drops its record; the job's results stay (the /v1/batch API serves them).
    assert client.delete(f"/v1/files/{output['id']}").get_json()["deleted"] is True
    error_of(client.get(f"/v1/files/{output['id']}"), 404, "not_found")
    assert services.storage.exists(layout.results_key(layout.JobKey("default", batch_id)))


def test_a_batch_failing_validation_has_errors_naming_the_line(app: Flask, client: FlaskClient) -> None:
    data = jsonl(["a", "b"]) + jsonl(["c"], url="/v1/completions") + jsonl(["d"])
    batch_id = new_batch(client, data)["id"]
    assert prepare_job(app.extensions["batchsvc"], batch_id) is None

    batch = client.get(f"/v1/batches/{batch_id}").get_json()

    assert batch["status"] == "failed"
    assert isinstance(batch["failed_at"], int) and batch["completed_at"] is None
    assert batch["errors"]["object"] == "list"
    [error] = batch["errors"]["data"]
    assert set(error) == {"code", "message", "param", "line"}
    assert error["line"] == 3
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["output_file_id"] is None


def _line(custom_id: object = "x", **overrides: Any) -> bytes:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "rate this candidate"}]},
    }
    line.update(overrides)
    return orjson.dumps({k: v for k, v in line.items() if v is not None}) + b"\n"


# Each bad-input kind, after one good first line: (settings overrides, file, line at fault, code).
BAD_INPUT_KINDS = {
    "not JSON": ({}, b'{"custom_id": "b", "method": \n', 2, "invalid_json"),
    "not an object": ({}, b"[1, 2, 3]\n", 2, "not_an_object"),
    "missing custom_id": ({}, _line(custom_id=None), 2, "missing_custom_id"),
    "empty custom_id": ({}, _line(custom_id=""), 2, "invalid_custom_id"),
    "duplicate custom_id": ({}, _line("b") + _line("b"), 3, "duplicate_custom_id"),
    "wrong method": ({}, _line("b", method="GET"), 2, "invalid_method"),
    "unsupported url": ({}, _line("b", url="/v1/embeddings"), 2, "unsupported_url"),
    "another endpoint than the batch's": ({}, _line("b", url="/v1/completions"), 2, "unsupported_url"),
    "body not matching the endpoint": ({}, _line("b", body={"model": MODEL, "prompt": "hi"}), 2, "invalid_body"),
    "over the line limit": (
        {"max_line_bytes": 400},
        _line("b", body={"model": MODEL, "messages": [{"role": "user", "content": "x" * 500}]}),
        2,
        "line_too_long",
    ),
    "invalid UTF-8": ({}, b'{"custom_id": "b\xff\xfe"}\n', 2, "invalid_utf8"),
    "over the count limit": ({"max_lines": 2}, _line("b") + _line("c"), None, "too_many_lines"),
    "over the size limit": ({"max_file_bytes": 300}, _line("b") + _line("c"), None, "file_too_large"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUT_KINDS))
def test_each_bad_input_kind_fails_the_batch_naming_the_line_and_runs_nothing(
    make_app: Any, services: Services, kind: str
) -> None:
    overrides, rest, line, code = BAD_INPUT_KINDS[kind]
    uploading = make_app().test_client()  # uploads under the default limits...
    file_id = upload_file(uploading, _line("a") + rest)["id"]
    app = make_app(**overrides)  # ...and the batch is validated under the test's
    client = app.test_client()
    batch_id = create_batch(client, file_id).get_json()["id"]
    assert prepare_job(app.extensions["batchsvc"], batch_id) is None

    batch = client.get(f"/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert (error["line"], error["code"]) == (line, code)
    assert error["message"]
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    shards = layout.job_prefix(layout.JobKey("default", batch_id)) + "shards/"
    assert [o.key for o in services.storage.list(shards)] == []  # nothing ran


def test_an_empty_file_fails_the_batch(app: Flask, client: FlaskClient, services: Services) -> None:
    batch_id = new_batch(client, b"", metadata={"model": MODEL})["id"]
    assert prepare_job(app.extensions["batchsvc"], batch_id) is None
    batch = client.get(f"/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "failed"
    assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [(None, "empty_file")]


@pytest.mark.parametrize(
    ("status", "shown", "finished_at"),
    [
        (JobStatus.QUEUED, "validating", None),
        (JobStatus.VALIDATING, "validating", None),
        (JobStatus.IN_PROGRESS, "in_progress", None),
        (JobStatus.FINALIZING, "finalizing", None),
        (JobStatus.CANCELLING, "cancelling", None),
        (JobStatus.COMPLETED, "completed", "completed_at"),
        (JobStatus.FAILED, "failed", "failed_at"),
        (JobStatus.CANCELLED, "cancelled", "cancelled_at"),
        (JobStatus.EXPIRED, "expired", "expired_at"),
    ],
)
def test_every_status_maps_to_an_openai_status_and_timestamp(
    client: FlaskClient, services: Services, status: JobStatus, shown: str, finished_at: str | None
) -> None:
    job = Job(id=new_job_id(), model=MODEL, status=status, created_at=T0, total=7)
    if status.terminal:
        job.finished_at = T0 + 60
    services.jobs.create(job)

    batch = client.get(f"/v1/batches/{job.id}").get_json()

    assert batch["status"] == shown
    assert {name for name in FINISHED_AT if batch[name] is not None} == ({finished_at} if finished_at else set())
    if finished_at:
        assert batch[finished_at] == int(T0) + 60
    assert batch["request_counts"]["total"] == 7


def test_an_unknown_batch_is_404(client: FlaskClient) -> None:
    job_id = new_job_id()
    assert error_of(client.get(f"/v1/batches/{job_id}"), 404, "not_found")["details"] == {"job_id": job_id}
    error_of(client.post(f"/v1/batches/{job_id}/cancel"), 404, "not_found")


# --- cancel ------------------------------------------------------------------------------


def test_cancelling_a_queued_batch_moves_it_to_cancelling(client: FlaskClient) -> None:
    # It ends cancelled once prepare has answered each request batch_cancelled (tests/hostile).
    batch_id = new_batch(client, jsonl(["a"]))["id"]

    cancelled = client.post(f"/v1/batches/{batch_id}/cancel")

    assert cancelled.status_code == 200
    batch = cancelled.get_json()
    assert (batch["status"], batch["cancelled_at"]) == ("cancelling", None)
    assert isinstance(batch["cancelling_at"], int)
    assert client.post(f"/v1/batches/{batch_id}/cancel").get_json()["status"] == "cancelling"  # harmless twice


def test_cancelling_a_running_batch_moves_it_to_cancelling(client: FlaskClient, services: Services) -> None:
    batch_id = new_batch(client, jsonl(["a"]))["id"]
    services.jobs.transition(batch_id, JobStatus.IN_PROGRESS, expect={JobStatus.QUEUED})
    batch = client.post(f"/v1/batches/{batch_id}/cancel").get_json()
    assert (batch["status"], batch["cancelled_at"]) == ("cancelling", None)
    assert isinstance(batch["cancelling_at"], int)


def test_cancelling_a_finished_batch_is_409_and_not_worth_a_retry(app: Flask, client: FlaskClient) -> None:
    batch_id = new_batch(client, jsonl(["a"]))["id"]
    complete(app, batch_id)
    response = client.post(f"/v1/batches/{batch_id}/cancel")
    error = error_of(response, 409, "conflict")
    assert "completed" in error["message"]
    assert response.headers["x-should-retry"] == "false"


# --- listing -----------------------------------------------------------------------------


def _jobs_at(services: Services, n: int, step: float = 1.0) -> list[str]:
    return [services.jobs.create(Job(id=new_job_id(), model=MODEL, created_at=T0 + i * step)).id for i in range(n)]


def test_batches_list_pages_newest_first(client: FlaskClient, services: Services) -> None:
    ids = _jobs_at(services, 5)[::-1]

    first = client.get("/v1/batches?limit=2").get_json()
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == ids[0:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    assert set(first["data"][0]) == BATCH_KEYS

    second = client.get(f"/v1/batches?limit=2&after={first['last_id']}").get_json()
    assert [b["id"] for b in second["data"]] == ids[2:4]
    assert second["has_more"] is True
    third = client.get(f"/v1/batches?limit=2&after={second['last_id']}").get_json()
    assert [b["id"] for b in third["data"]] == ids[4:5]
    assert third["has_more"] is False

    assert client.get("/v1/batches?limit=5").get_json()["has_more"] is False


def test_a_list_skips_jobs_whose_record_is_gone(client: FlaskClient, services: Services) -> None:
    ids = _jobs_at(services, 4)[::-1]
    services.jobs.redis.delete(f"{services.jobs.prefix}:job:{ids[1]}")
    page = client.get("/v1/batches?limit=2").get_json()
    assert [b["id"] for b in page["data"]] == [ids[0], ids[2]]
    assert page["has_more"] is True


def test_jobs_of_the_seed_api_are_batches_too(client: FlaskClient) -> None:
    job_id = seed_upload(client, jsonl(["a"]), MODEL).get_json()["job_id"]
    [batch] = client.get("/v1/batches").get_json()["data"]
    assert (batch["id"], batch["status"], batch["model"]) == (job_id, "validating", MODEL)
    assert batch["input_file_id"] is None and batch["endpoint"] is None


def test_an_empty_batches_list(client: FlaskClient) -> None:
    body = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert client.get("/v1/batches").get_json() == body


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=many", "order=asc"])
def test_bad_batch_list_arguments_are_422(client: FlaskClient, query: str) -> None:
    error_of(client.get(f"/v1/batches?{query}"), 422, "validation_error")


def test_batches_list_after_an_unknown_batch_is_404(client: FlaskClient) -> None:
    error_of(client.get(f"/v1/batches?after={new_job_id()}"), 404, "not_found")


# --- the official client -----------------------------------------------------------------


def test_the_openai_client_reads_our_objects(app: Flask, oai: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(["a", "b"]))
    with path.open("rb") as fh:
        uploaded = oai.files.create(file=fh, purpose="batch")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("requests.jsonl", path.stat().st_size, "batch")

    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (batch.status, batch.model, batch.input_file_id) == ("validating", MODEL, uploaded.id)
    complete(app, batch.id)

    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 2
    assert done.output_file_id is not None
    lines = oai.files.content(done.output_file_id).text.splitlines()
    assert [orjson.loads(line)["custom_id"] for line in lines] == ["a", "b"]
    assert [b.id for b in oai.batches.list()] == [batch.id]
    assert {f.id for f in oai.files.list()} == {uploaded.id, done.output_file_id, done.error_file_id}
    assert oai.files.delete(uploaded.id).deleted is True


def test_the_openai_client_raises_typed_errors_with_our_messages(
    app: Flask, oai: openai.OpenAI, tmp_path: Path
) -> None:
    with pytest.raises(openai.NotFoundError, match="no file with id 'file-nope'"):
        oai.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError, match="no batch job with id"):
        oai.batches.retrieve(new_job_id())
    with pytest.raises(openai.UnprocessableEntityError, match="invalid field 'purpose'") as bad_purpose:
        oai.files.create(file=("x.jsonl", jsonl(["a"])), purpose="fine-tune")
    assert bad_purpose.value.body["details"]["fields"]["purpose"]

    file_id = oai.files.create(file=("x.jsonl", jsonl(["a"])), purpose="batch").id
    with pytest.raises(openai.UnprocessableEntityError, match="invalid field 'endpoint'"):
        oai.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.UnprocessableEntityError, match="unknown model 'gpt-17'"):
        oai.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"model": "gpt-17"},
        )

    batch = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    complete(app, batch.id)
    with pytest.raises(openai.ConflictError, match="cannot cancel a batch that is completed"):
        oai.batches.cancel(batch.id)
