"""Client input that once crashed a view or poisoned a listing (issue 9, rows 1, 2,
5, 8, 9, 13, 14, 16), and the classes behind them: every duration a client sends is
bounded and parsed once, nothing is stored that cannot be rendered back, every
JSON parser is protected against nesting depth, no message names a server path."""

from __future__ import annotations

import io
import logging
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.store.keys import Role
from tests.support.client import error_of, upload

MODEL = "tiny-random"


def line(custom_id: str = "r1", **body: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def multipart(parts: list[tuple[str, bytes, bytes | None]]) -> tuple[bytes, str]:
    """A multipart body built by hand, so that it can hold what encoders refuse
    (a filename that is not UTF-8, a part given twice)."""
    out = io.BytesIO()
    for name, value, filename in parts:
        out.write(b'--XX\r\nContent-Disposition: form-data; name="' + name.encode() + b'"')
        if filename is not None:
            out.write(b'; filename="' + filename + b'"\r\nContent-Type: application/jsonl')
        out.write(b"\r\n\r\n" + value + b"\r\n")
    out.write(b"--XX--\r\n")
    return out.getvalue(), "multipart/form-data; boundary=XX"


# --- durations: bounded and parsed once (rows 1, 2) ------------------------------------


@pytest.mark.parametrize("window", ["3000000d", "1" + "0" * 400 + "s", "999999999d", "2592001s"])
def test_an_absurd_completion_window_is_refused_and_nothing_is_stored(client: FlaskClient, window: str) -> None:
    response = upload(client, line() + b"\n", MODEL, completion_window=window)
    error = error_of(response, 422, "validation_error")
    assert "completion_window" in error["details"]["fields"]
    listing = client.get("/v1/batch")
    assert listing.status_code == 200 and listing.get_json()["data"] == []


def test_the_longest_window_allowed_is_stored_and_renders_everywhere(client: FlaskClient) -> None:
    response = upload(client, line() + b"\n", MODEL, completion_window="30d")  # max_completion_window_s
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    assert client.get(f"/v1/batch/{job_id}").get_json()["expires_at"]
    assert client.get("/v1/batch").status_code == 200
    assert client.get(f"/v1/batches/{job_id}").get_json()["expires_at"]
    assert client.get("/v1/batches").status_code == 200


@pytest.mark.parametrize("window", ["1" + "0" * 400 + "s", "3000000d"])
def test_the_openai_batches_api_bounds_windows_the_same_way(client: FlaskClient, window: str) -> None:
    file_id = client.post(
        "/v1/files", data={"purpose": "batch", "file": (io.BytesIO(line() + b"\n"), "in.jsonl")}
    ).get_json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window}
    error_of(client.post("/v1/batches", json=body), 422, "validation_error")
    assert client.get("/v1/batches").get_json()["data"] == []


# --- nesting depth (row 5) ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/batches", "/v1/keys"])
def test_deeply_nested_json_is_a_400(make_app: Any, path: str) -> None:
    client = make_app(role=Role.ADMIN).test_client()
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 40 + b"1" + b"}" * 40):
        error = error_of(client.post(path, data=body, content_type="application/json"), 400, "invalid_request")
        assert "nested deeper" in error["message"]


def test_deep_json_inside_a_form_field_is_a_422(client: FlaskClient) -> None:
    metadata = "[" * 100_000 + "]" * 100_000
    response = upload(client, line() + b"\n", MODEL, metadata=metadata)
    assert "metadata" in error_of(response, 422, "validation_error")["details"]["fields"]


def test_a_lone_surrogate_in_a_json_body_is_refused_not_stored(client: FlaskClient) -> None:
    body = b'{"model": "tiny-random", "input_file_url": "https://example.com/x", "metadata": {"job_name": "\\ud800"}}'
    error_of(client.post("/v1/batch", data=body, content_type="application/json"), 400, "invalid_request")


# --- sizes (row 16) -------------------------------------------------------------------------


def test_an_oversized_json_body_is_a_413_even_when_chunked(client: FlaskClient) -> None:
    big = b'{"model": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    # A stream with no Content-Length, as a server hands over a chunked body.
    response = client.post(
        "/v1/batch",
        input_stream=io.BytesIO(big),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    error = error_of(response, 413, "payload_too_large")
    assert error["details"]["limit"] == "max_json_body_bytes"


def test_two_file_parts_are_refused_not_one_picked(client: FlaskClient) -> None:
    body, content_type = multipart(
        [
            ("model", MODEL.encode(), None),
            ("file", line("a") + b"\n", b"a.jsonl"),
            ("file", line("b") + b"\n", b"b.jsonl"),
        ]
    )
    error = error_of(client.post("/v1/batch", data=body, content_type=content_type), 422, "validation_error")
    assert "file" in error["details"]["fields"]
    body, content_type = multipart(
        [("purpose", b"batch", None), ("file", line("a") + b"\n", b"a.jsonl"), ("file", line("b") + b"\n", b"b.jsonl")]
    )
    error_of(client.post("/v1/files", data=body, content_type=content_type), 422, "validation_error")


def test_a_form_field_given_twice_is_refused(client: FlaskClient) -> None:
    body, content_type = multipart(
        [("model", MODEL.encode(), None), ("model", b"other", None), ("file", line() + b"\n", b"a.jsonl")]
    )
    error = error_of(client.post("/v1/batch", data=body, content_type=content_type), 422, "validation_error")
    assert "model" in error["details"]["fields"]


# --- multipart that cannot be decoded (row 9) ---------------------------------------------


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/files"])
def test_a_filename_that_is_not_utf8_is_named_as_the_problem(client: FlaskClient, path: str) -> None:
    body, content_type = multipart(
        [("model", MODEL.encode(), None), ("purpose", b"batch", None), ("file", line() + b"\n", b"\xff\xfe.jsonl")]
    )
    error = error_of(client.post(path, data=body, content_type=content_type), 400, "invalid_request")
    assert "UTF-8" in error["message"] and "Missing data" not in error["message"]


# --- the audit line tells the status the client got (row 8) -------------------------------


def test_a_refused_submit_is_audited_with_the_status_the_client_got(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchsvc.audit")
    answers = [
        client.post("/v1/batch", json={"model": 5, "input_file_url": "https://example.com/x"}),
        client.post("/v1/files", data={"purpose": "other", "file": (io.BytesIO(b"{}\n"), "x.jsonl")}),
        client.post("/v1/batch", data=b"[" * 5000, content_type="application/json"),
    ]
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "batchsvc.audit"]
    assert [(a.status_code, a.status_code) for a in answers] == [(line["status"], 422) for line in lines[:2]] + [
        (lines[2]["status"], 400)
    ]
    assert {line["outcome"] for line in lines} == {"error"}


# --- JSONL lines (rows 13, 14) --------------------------------------------------------------


def test_a_line_of_exactly_max_line_bytes_is_accepted_with_lf_and_with_crlf(app: Flask) -> None:
    from batchsvc.inference.validation import BatchValidator

    limit = app.extensions["batchsvc"].settings.max_line_bytes
    base = line()
    exact = base[:-2] + b', "user": "' + b"u" * (limit - len(base) - 12) + b'"}}'
    assert len(exact) == limit
    for newline in (b"\n", b"\r\n"):
        for data in (exact + newline, b"\xef\xbb\xbf" + exact + newline):
            report = BatchValidator(model_names={MODEL}).validate(io.BytesIO(data + line("r2") + newline))
            assert report.ok and report.valid == 2, (newline, report.errors)
    too_long = exact[:-3] + b'u"}}'
    for newline in (b"\n", b"\r\n", b""):
        report = BatchValidator(model_names={MODEL}).validate(io.BytesIO(too_long + newline + line("r2") + newline))
        assert [e.code for e in report.errors] == ["line_too_long"], newline
        assert report.valid == (1 if newline else 0)


def test_a_model_mismatch_names_no_server_path(app: Flask) -> None:
    from batchsvc.inference.validation import BatchValidator

    spec = app.extensions["batchsvc"].models.get(MODEL)
    report = BatchValidator(model_names=spec.names).validate(io.BytesIO(line() + b"\n" + line("r2", model="qwen3-4b")))
    [error] = report.errors
    assert error.code == "model_mismatch" and f"'{MODEL}'" in error.message
    assert "/" not in error.message.replace("/v1", ""), error.message


def test_no_error_message_names_a_server_path() -> None:
    from batchsvc.errors import ErrorType, ServiceError
    from batchsvc.settings import PROJECT_ROOT

    error = ServiceError(ErrorType.INTERNAL, f"cannot open {PROJECT_ROOT / 'var' / 'models' / 'x'}: gone")
    assert str(PROJECT_ROOT) not in error.to_dict()["error"]["message"]


# --- OPTIONS ------------------------------------------------------------------------------


def test_options_answers_json_with_the_allowed_methods(client: FlaskClient) -> None:
    response = client.options("/v1/batch")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert set(response.get_json()["allow"]) >= {"GET", "POST", "OPTIONS"}
    assert "POST" in response.headers["Allow"]


# --- the retry path reads input lines as validation does (row 7) --------------------------


def test_the_retry_of_failed_requests_reads_a_bom_and_crlf_input_like_validation(app: Flask) -> None:
    from batchsvc.pipeline.recovery import failed_requests_file
    from batchsvc.store.jobs import Job, JobStatus, new_job_id

    svc = app.extensions["batchsvc"]
    job = Job(id=new_job_id(), model=MODEL, status=JobStatus.COMPLETED, input_key="t/in.jsonl", errors_key="t/e.jsonl")
    svc.storage.put_bytes(job.input_key, b"\xef\xbb\xbf" + line("r1") + b"\r\n" + line("r2") + b"\r\n", "x")
    svc.storage.put_bytes(job.errors_key, orjson.dumps({"custom_id": "r1", "error": {}}) + b"\n", "x")
    out = io.BytesIO()
    assert failed_requests_file(svc, job, out) == 1
    assert out.getvalue() == line("r1") + b"\n"
