"""The native /v1 API as declared with flask-smorest: every operation in
/openapi.json with its parameters, bodies and response schemas; the answers
the views give conform to those schemas, key for key; and the field checks that
moved into schemas answer 422 naming the field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from batchsvc.access import Role
from batchsvc.pipeline.costs import cost_report
from batchsvc.pipeline.estimate import run_estimate
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import give_up_shard, run_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import JobStatus
from tasks.names import REDRIVE
from tests.support.client import client_of, error_of
from tests.unit.test_web import MODEL, complete, jsonl, named_fields, queued_messages, upload
from web.api import estimate_view, job_view
from web.schemas import BatchJobSchema, CostRowSchema, EstimateSchema

# (method, path in the document): every view of the v1 blueprint.
OPERATIONS = [
    ("post", "/v1/batch"),
    ("get", "/v1/batch"),
    ("get", "/v1/batch/{job_id}"),
    ("get", "/v1/batch/{job_id}/results"),
    ("get", "/v1/batch/{job_id}/partial"),
    ("post", "/v1/batch/{job_id}/retry"),
    ("post", "/v1/batch/{job_id}/cancel"),
    ("get", "/v1/estimates/{estimate_id}"),
    ("delete", "/v1/estimates/{estimate_id}"),
    ("get", "/v1/reports/costs"),
    ("get", "/v1/downloads/{token}"),
]


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return document["paths"][path][method]


def query_parameters(document: dict[str, Any], method: str, path: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation(document, method, path).get("parameters", []) if p["in"] == "query"}


def conforms(document: dict[str, Any], method: str, path: str, response: TestResponse) -> None:
    """The body of `response` is valid against the schema the document gives for its status."""
    documented = operation(document, method, path)["responses"][str(response.status_code)]
    [(content_type, media)] = documented["content"].items()
    assert response.mimetype == content_type
    if content_type == "application/json":
        schema = {**media["schema"], "components": document["components"]}
        OAS30Validator(schema).validate(response.get_json())


def assert_dumped_unchanged(schema: Schema, raw: dict[str, Any]) -> None:
    """The response schema writes every key the view built, with the same JSON (an int stays an int)."""
    assert orjson.dumps(schema.dump(raw), option=orjson.OPT_SORT_KEYS) == orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)


# --- the document ----------------------------------------------------------------------


def test_the_document_is_valid_and_has_every_v1_operation(document: dict[str, Any]) -> None:
    validate(document)
    for method, path in OPERATIONS:
        op = operation(document, method, path)
        success = [code for code in op["responses"] if code.startswith("2")]
        assert success, (method, path)
        assert op["responses"]["default"] == {"$ref": "#/components/responses/DEFAULT_ERROR"}


def test_the_submission_documents_both_bodies(document: dict[str, Any]) -> None:
    body = operation(document, "post", "/v1/batch")["requestBody"]
    content = body["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    schemas = document["components"]["schemas"]
    as_json = schemas[content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    as_form = schemas[content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(as_json["required"]) == {"model", "input_file_url"}
    assert set(as_form["required"]) == {"model", "file"}
    assert as_form["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": "the JSONL of requests",
    }
    assert "input_file_url" not in as_form["properties"]
    answers = operation(document, "post", "/v1/batch")["responses"]
    assert answers["202"]["content"]["application/json"]["schema"] == {
        "oneOf": [{"$ref": "#/components/schemas/JobCreated"}, {"$ref": "#/components/schemas/Estimate"}]
    }
    assert {"413", "415", "422"} <= set(answers)


def test_the_query_parameters_are_documented_with_their_values(document: dict[str, Any]) -> None:
    retry = query_parameters(document, "post", "/v1/batch/{job_id}/retry")
    assert retry["scope"]["schema"]["enum"] == ["job", "failed_requests"]
    assert retry["scope"]["schema"]["default"] == "job"
    assert "pattern" in retry["tenant"]["schema"]
    assert query_parameters(document, "get", "/v1/batch/{job_id}/results")["partial"]["schema"]["type"] == "boolean"
    assert query_parameters(document, "get", "/v1/batch/{job_id}/partial")["kind"]["schema"]["enum"] == [
        "results",
        "errors",
    ]
    assert set(query_parameters(document, "get", "/v1/batch")) == {"limit", "after"}
    assert query_parameters(document, "get", "/v1/reports/costs")["since"]["schema"]["type"] == "number"


def test_the_streams_are_documented_as_jsonl_and_the_download_link_as_public(document: dict[str, Any]) -> None:
    for path in ("/v1/batch/{job_id}/partial", "/v1/downloads/{token}"):
        assert set(operation(document, "get", path)["responses"]["200"]["content"]) == {"application/jsonl"}
    assert operation(document, "get", "/v1/downloads/{token}")["security"] == []
    assert "security" not in operation(document, "get", "/v1/batch/{job_id}")  # the document's default: a key


# --- the answers conform to the document, key for key ------------------------------------


def test_every_answer_of_a_job_s_life_conforms_to_its_documented_schema(
    app: Flask, client: FlaskClient, document: dict[str, Any]
) -> None:
    svc: Services = app.extensions["batchsvc"]
    submitted = upload(client, jsonl(["a", "b", "c"]), metadata={"job_name": "screening"})
    conforms(document, "post", "/v1/batch", submitted)
    job_id = submitted.get_json()["job_id"]
    url_job = client.post("/v1/batch", json={"model": MODEL, "input_file_url": "https://files.example.com/in.jsonl"})
    conforms(document, "post", "/v1/batch", url_job)
    conforms(document, "get", "/v1/batch/{job_id}", client.get(f"/v1/batch/{job_id}"))
    complete(app, job_id)
    conforms(document, "get", "/v1/batch/{job_id}", client.get(f"/v1/batch/{job_id}"))
    conforms(document, "get", "/v1/batch/{job_id}/results", client.get(f"/v1/batch/{job_id}/results"))
    conforms(document, "get", "/v1/batch", client.get("/v1/batch?limit=1"))
    conforms(document, "get", "/v1/reports/costs", client.get("/v1/reports/costs"))

    running = upload(client, jsonl(["r1", "r2"])).get_json()["job_id"]
    assert prepare_job(svc, running) is not None
    assert svc.jobs.transition(running, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    run_shard(svc, running, 0)
    partial = client.get(f"/v1/batch/{running}/results?partial=true")
    assert partial.get_json()["partial"] is True
    conforms(document, "get", "/v1/batch/{job_id}/results", partial)
    conforms(document, "get", "/v1/batch/{job_id}/partial", client.get(f"/v1/batch/{running}/partial?kind=errors"))
    redrive = client.post(f"/v1/batch/{running}/retry")
    assert redrive.status_code == 202
    conforms(document, "post", "/v1/batch/{job_id}/retry", redrive)

    failing = upload(client, jsonl(["f1", "f2"])).get_json()["job_id"]
    assert prepare_job(svc, failing) is not None
    assert svc.jobs.transition(failing, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    give_up_shard(svc, failing, 0, "the engine kept crashing")
    finalize_job(svc, failing)
    first = client.post(f"/v1/batch/{failing}/retry?scope=failed_requests")
    again = client.post(f"/v1/batch/{failing}/retry?scope=failed_requests")
    assert (first.status_code, again.status_code) == (202, 200)
    conforms(document, "post", "/v1/batch/{job_id}/retry", first)
    conforms(document, "post", "/v1/batch/{job_id}/retry", again)
    cancelled = client.post(f"/v1/batch/{first.get_json()['job_id']}/cancel")
    assert cancelled.status_code == 200
    conforms(document, "post", "/v1/batch/{job_id}/cancel", cancelled)


def test_a_dry_run_and_its_estimate_conform_to_their_documented_schema(
    app: Flask, client: FlaskClient, document: dict[str, Any]
) -> None:
    dry = upload(client, jsonl(["a", "b"]), dry_run="true")
    assert dry.status_code == 202
    conforms(document, "post", "/v1/batch", dry)
    url = dry.get_json()["url"]
    conforms(document, "get", "/v1/estimates/{estimate_id}", client.get(url))
    run_estimate(app.extensions["batchsvc"], dry.get_json()["estimate_id"])
    done = client.get(url)
    assert done.get_json()["status"] == "done"
    conforms(document, "get", "/v1/estimates/{estimate_id}", done)
    conforms(document, "delete", "/v1/estimates/{estimate_id}", client.delete(url))


def test_the_response_schemas_write_every_key_the_views_build(app: Flask, client: FlaskClient) -> None:
    """What the views built before they were declared goes out unchanged: a job in
    each of its shapes, an estimate queued, done and invalid, a cost row."""
    svc: Services = app.extensions["batchsvc"]
    queued = upload(client, jsonl(["a"])).get_json()["job_id"]
    completed = upload(client, jsonl(["b", "c"])).get_json()["job_id"]
    complete(app, completed)
    svc.jobs.update(completed, data_expired_at=1_700_000_000.0)
    failed = upload(client, jsonl(["d"]) + b"{oops\n").get_json()["job_id"]
    prepare_job(svc, failed)
    done = upload(client, jsonl(["e", "f"]), dry_run="true").get_json()["estimate_id"]
    invalid = upload(client, b"{oops\n", dry_run="true").get_json()["estimate_id"]
    run_estimate(svc, done)
    run_estimate(svc, invalid)
    with app.test_request_context():
        views = [job_view(svc, svc.jobs.get(job_id)) for job_id in (queued, completed, failed)]
        assert {"quality", "data_expired_at"} <= set(views[1]) and {"errors", "error_count"} <= set(views[2])
        for view in views:
            assert_dumped_unchanged(BatchJobSchema(), view)
        estimates = [estimate_view(svc.estimates.get(estimate_id)) for estimate_id in (done, invalid)]
        assert [e["status"] for e in estimates] == ["done", "invalid"]
        for estimate in estimates:
            assert_dumped_unchanged(EstimateSchema(), estimate)
    [row] = cost_report(svc, None)
    assert_dumped_unchanged(CostRowSchema(), row)


# --- field checks now in the schemas -------------------------------------------------------


def _running_job(app: Flask, client: FlaskClient) -> str:
    svc: Services = app.extensions["batchsvc"]
    job_id = upload(client, jsonl(["a", "b"])).get_json()["job_id"]
    assert prepare_job(svc, job_id) is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    return job_id


def _redrives(settings: Settings) -> list[dict[str, Any]]:
    return [m for m in queued_messages(settings) if m["headers"]["task"] == REDRIVE]


@pytest.mark.parametrize("scope", ["failed_request", "FAILED_REQUESTS", "all", ""])
def test_a_misspelt_retry_scope_is_a_422_and_redrives_nothing(
    app: Flask, client: FlaskClient, settings: Settings, scope: str
) -> None:
    """Before, any scope but failed_requests silently re-drove the whole job."""
    job_id = _running_job(app, client)
    error = error_of(client.post(f"/v1/batch/{job_id}/retry?scope={scope}"), 422, "validation_error")
    assert named_fields(error) == {"scope"}
    assert "failed_requests" in error["message"]
    assert _redrives(settings) == []
    # The same job re-drives when asked rightly, so the refusal above was the scope's.
    answer = client.post(f"/v1/batch/{job_id}/retry?scope=job")
    assert answer.status_code == 202 and answer.get_json()["step"] == "shards"
    assert len(_redrives(settings)) == 1


def test_a_misspelt_retry_scope_from_a_viewer_is_still_a_403(make_app: Any) -> None:
    client = make_app(role=Role.VIEWER).test_client()
    error_of(client.post("/v1/batch/batch_x/retry?scope=nope"), 403, "forbidden")


def test_an_admin_s_retry_tenant_must_be_a_tenant_name(app: Flask) -> None:
    admin = client_of(app, role=Role.ADMIN)
    error = error_of(admin.post("/v1/batch/batch_x/retry?tenant=Not%20A%20Tenant"), 422, "validation_error")
    assert named_fields(error) == {"tenant"}


@pytest.mark.parametrize("value", ["maybe", "2", "tru"])
def test_partial_is_a_boolean(app: Flask, client: FlaskClient, value: str) -> None:
    job_id = _running_job(app, client)
    error = error_of(client.get(f"/v1/batch/{job_id}/results?partial={value}"), 422, "validation_error")
    assert named_fields(error) == {"partial"}


@pytest.mark.parametrize(("value", "answer"), [("true", 200), ("1", 200), ("yes", 200), ("false", 409), ("0", 409)])
def test_partial_reads_the_usual_spellings_of_a_boolean(
    app: Flask, client: FlaskClient, value: str, answer: int
) -> None:
    job_id = _running_job(app, client)
    assert client.get(f"/v1/batch/{job_id}/results?partial={value}").status_code == answer


def test_a_misspelt_results_parameter_is_a_422_not_a_silent_default(app: Flask, client: FlaskClient) -> None:
    job_id = _running_job(app, client)
    error = error_of(client.get(f"/v1/batch/{job_id}/results?partail=true"), 422, "validation_error")
    assert named_fields(error) == {"partail"}


def test_a_misspelt_partial_kind_is_a_422(app: Flask, client: FlaskClient) -> None:
    job_id = _running_job(app, client)
    error = error_of(client.get(f"/v1/batch/{job_id}/partial?kind=result"), 422, "validation_error")
    assert named_fields(error) == {"kind"}


@pytest.mark.parametrize("since", ["yesterday", "nan", "inf", "1e300", "-5"])
def test_costs_since_must_be_unix_seconds(client: FlaskClient, since: str) -> None:
    """1e300 was a 500 before: no date shows that many seconds."""
    error = error_of(client.get(f"/v1/reports/costs?since={since}"), 422, "validation_error")
    assert named_fields(error) == {"since"}


def test_costs_since_empty_means_all(client: FlaskClient) -> None:
    assert client.get("/v1/reports/costs?since=").get_json() == {"data": [], "since": None}
    assert client.get("/v1/reports/costs?since=0").get_json() == {"data": [], "since": "1970-01-01T00:00:00Z"}


def test_a_json_submission_without_input_file_url_points_to_the_upload(client: FlaskClient) -> None:
    error = error_of(client.post("/v1/batch", json={"model": MODEL}), 422, "validation_error")
    assert named_fields(error) == {"input_file_url"}
    assert "multipart/form-data" in error["message"]


def test_a_multipart_submission_without_a_file_part_says_so(client: FlaskClient) -> None:
    response = client.post("/v1/batch", data={"model": MODEL}, content_type="multipart/form-data")
    error = error_of(response, 422, "validation_error")
    assert named_fields(error) == {"file"}
    assert "'file' part" in error["message"]


def test_a_form_field_named_file_is_not_a_file_part(client: FlaskClient, services: Services) -> None:
    response = client.post("/v1/batch", data={"model": MODEL, "file": "{}"}, content_type="multipart/form-data")
    assert named_fields(error_of(response, 422, "validation_error")) == {"file"}
    assert services.jobs.list_ids() == []


def test_a_multipart_submission_with_a_file_and_a_url_says_not_both(client: FlaskClient, services: Services) -> None:
    error = error_of(
        upload(client, jsonl(["a"]), input_file_url="https://example.com/in.jsonl"), 422, "validation_error"
    )
    assert named_fields(error) == {"input_file_url"}
    assert "not both" in error["message"]
    assert services.jobs.list_ids() == []
