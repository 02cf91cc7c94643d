"""The OpenAI-compatible Files and Batches API as declared with flask-smorest:
every operation in /openapi.json with its body, query and response schemas; the
objects the views answer conform to those schemas, key for key, in every status
a batch can have and for jobs of the native API too; and the multipart upload is
read by its schema (a wrong content type is a 415, a misspelt part a 422)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.services import Services
from batchsvc.store.jobs import Job, JobStatus, new_job_id
from tests.support.client import error_of
from tests.support.client import upload as seed_upload
from tests.unit.test_openai_api import MODEL, T0, complete, jsonl, new_batch, post_file, upload_file
from tests.unit.test_openapi_v1 import assert_dumped_unchanged, conforms, operation, query_parameters
from web.openai_api import batch_object, file_object
from web.openai_schemas import BATCH_STATUSES, OpenAIBatchSchema, OpenAIFileSchema

# (method, path in the document): every view of the openai blueprint.
OPERATIONS = [
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{file_id}"),
    ("get", "/v1/files/{file_id}/content"),
    ("delete", "/v1/files/{file_id}"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/{batch_id}"),
    ("post", "/v1/batches/{batch_id}/cancel"),
]


def component(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def test_every_openai_operation_is_in_the_document_with_its_answers(document: dict[str, Any]) -> None:
    for method, path in OPERATIONS:
        op = operation(document, method, path)
        assert "200" in op["responses"], (method, path)
        assert op["responses"]["default"] == {"$ref": "#/components/responses/DEFAULT_ERROR"}
        assert op["tags"] == ["openai"]
    assert "404" in operation(document, "get", "/v1/batches/{batch_id}")["responses"]
    assert "409" in operation(document, "post", "/v1/batches/{batch_id}/cancel")["responses"]


def test_the_upload_is_documented_as_one_multipart_body(document: dict[str, Any]) -> None:
    body = operation(document, "post", "/v1/files")["requestBody"]
    [(content_type, media)] = body["content"].items()
    assert content_type == "multipart/form-data"
    schema = component(document, media["schema"])
    assert set(schema["required"]) == {"file", "purpose"}
    assert schema["properties"]["file"]["format"] == "binary"
    assert {"413", "415"} <= set(operation(document, "post", "/v1/files")["responses"])


def test_the_batch_body_and_the_list_queries_are_documented(document: dict[str, Any]) -> None:
    body = operation(document, "post", "/v1/batches")["requestBody"]
    schema = component(document, body["content"]["application/json"]["schema"])
    assert set(schema["required"]) == {"input_file_id", "endpoint", "completion_window"}
    assert "/v1/chat/completions" in schema["properties"]["endpoint"]["enum"]
    files = query_parameters(document, "get", "/v1/files")
    assert files["purpose"]["schema"]["enum"] == ["batch", "batch_output", None]  # None: not given
    assert set(query_parameters(document, "get", "/v1/batches")) == {"limit", "after"}
    batch = component(document, {"$ref": "#/components/schemas/OpenAIBatch"})
    assert batch["properties"]["status"]["enum"] == BATCH_STATUSES
    assert "queued" not in BATCH_STATUSES  # OpenAI has no such status: queued shows as validating


def test_file_answers_conform_to_the_document(client: FlaskClient, document: dict[str, Any]) -> None:
    created = post_file(client, jsonl(["a", "b"]))
    conforms(document, "post", "/v1/files", created)
    file_id = created.get_json()["id"]
    conforms(document, "get", "/v1/files", client.get("/v1/files"))
    conforms(document, "get", "/v1/files/{file_id}", client.get(f"/v1/files/{file_id}"))
    conforms(document, "get", "/v1/files/{file_id}/content", client.get(f"/v1/files/{file_id}/content"))
    conforms(document, "delete", "/v1/files/{file_id}", client.delete(f"/v1/files/{file_id}"))


def test_batch_answers_conform_to_the_document(app: Flask, client: FlaskClient, document: dict[str, Any]) -> None:
    file_id = upload_file(client, jsonl(["a", "b"]))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = client.post("/v1/batches", json=body)
    conforms(document, "post", "/v1/batches", created)
    batch_id = created.get_json()["id"]
    complete(app, batch_id)
    done = client.get(f"/v1/batches/{batch_id}")
    assert done.get_json()["output_file_id"] is not None
    conforms(document, "get", "/v1/batches/{batch_id}", done)
    conforms(document, "get", "/v1/batches", client.get("/v1/batches"))
    queued = new_batch(client, jsonl(["c"]))["id"]
    conforms(document, "post", "/v1/batches/{batch_id}/cancel", client.post(f"/v1/batches/{queued}/cancel"))


@pytest.mark.parametrize("status", list(JobStatus))
def test_a_batch_in_every_status_dumps_unchanged_and_conforms(
    client: FlaskClient, services: Services, document: dict[str, Any], status: JobStatus
) -> None:
    job = Job(id=new_job_id(), model=MODEL, status=status, created_at=T0, total=3)
    if status.terminal:
        job.finished_at = T0 + 60
    if status is JobStatus.FAILED:
        job.errors = [{"line": 2, "code": "invalid_json", "message": "not JSON", "param": None}]
    services.jobs.create(job)
    assert_dumped_unchanged(OpenAIBatchSchema(), batch_object(services, services.jobs.get(job.id)))
    conforms(document, "get", "/v1/batches/{batch_id}", client.get(f"/v1/batches/{job.id}"))


def test_a_native_job_is_a_batch_that_conforms(
    client: FlaskClient, services: Services, document: dict[str, Any]
) -> None:
    # Submitted to /v1/batch: no endpoint, no input file id, no completion window.
    job_id = seed_upload(client, jsonl(["a"]), MODEL).get_json()["job_id"]
    raw = batch_object(services, services.jobs.get(job_id))
    assert raw["endpoint"] is None and raw["input_file_id"] is None
    assert_dumped_unchanged(OpenAIBatchSchema(), raw)
    conforms(document, "get", "/v1/batches/{batch_id}", client.get(f"/v1/batches/{job_id}"))


def test_a_file_record_dumps_unchanged(client: FlaskClient, services: Services) -> None:
    file_id = upload_file(client, jsonl(["a"]))["id"]
    assert_dumped_unchanged(OpenAIFileSchema(), file_object(services.files.get(file_id)))


def test_an_upload_part_the_schema_does_not_know_is_422_naming_it(client: FlaskClient) -> None:
    error = error_of(post_file(client, jsonl(["a"]), purpse="batch"), 422, "validation_error")
    assert set(error["details"]["fields"]) == {"purpse"}


def test_an_upload_as_json_is_415_before_any_field_is_read(client: FlaskClient) -> None:
    error = error_of(client.post("/v1/files", json={"purpose": "batch"}), 415, "unsupported_media_type")
    assert error["details"] == {"content_type": "application/json"}


def test_a_misspelt_list_parameter_is_422_naming_it(client: FlaskClient) -> None:
    for path in ("/v1/files?purpos=batch", "/v1/batches?limt=2"):
        error = error_of(client.get(path), 422, "validation_error")
        assert set(error["details"]["fields"]) == {path.split("?")[1].split("=")[0]}
