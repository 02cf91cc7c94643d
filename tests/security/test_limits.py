"""Limits: a request rate per key (Flask-Limiter on Redis), quotas per tenant
(active jobs, queued requests), body size checked while streaming, and
max_tokens capped per model. Past a limit: 429 with Retry-After, or 413, and
nothing of the refused request is kept."""

from __future__ import annotations

import gc
import http.client
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from batchsvc.access import Role
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.services import Services
from batchsvc.store.jobs import JobStatus
from tests.support.client import client_of, error_of, grant, upload
from tests.support.http import LoopbackHTTPServer


def lines(n: int, **body: Any) -> bytes:
    messages = [{"role": "user", "content": "rate this candidate"}]
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": messages, **body},
            }
        )
        + b"\n"
        for i in range(n)
    )


def stored_keys(app: Flask) -> list[str]:
    return [o.key for o in app.extensions["batchsvc"].storage.list("") if not o.key.startswith(".")]


# --- rate limit ------------------------------------------------------------------------


def test_past_its_rate_a_key_gets_429_with_retry_after_and_other_keys_do_not(app: Flask) -> None:
    app.extensions["batchsvc"].tenants.update("default", rate_limit="3/minute")
    first, second = client_of(app), client_of(app)
    allowed = [first.get("/v1/batch") for _ in range(3)]
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert all("Retry-After" not in r.headers for r in allowed)  # it means something on a 429 only

    refused = first.get("/v1/batch")
    error_of(refused, 429, "rate_limited")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert second.get("/v1/batch").status_code == 200  # a bucket per key
    assert first.get("/healthz").status_code == 200  # health checks are never limited


def test_callers_with_a_wrong_key_are_limited_per_address(make_app: Any) -> None:
    """Guessing keys costs requests: refused calls count against the caller's address."""
    app = make_app(role=None, api_rate_limit="3/minute")
    client = app.test_client()
    wrong = {"Authorization": "Bearer bsk_guess"}
    assert [client.get("/v1/batch", headers=wrong).status_code for _ in range(3)] == [401, 401, 401]
    error_of(client.get("/v1/batch", headers=wrong), 429, "rate_limited")
    other_address = client.get("/v1/batch", headers=wrong, environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other_address.status_code == 401
    assert client.get("/v1/batch", headers={"Authorization": f"Bearer {grant(app)}"}).status_code == 200


def test_wrong_keys_on_metrics_count_too(make_app: Any) -> None:
    client = make_app(role=None, api_rate_limit="2/minute").test_client()
    wrong = {"Authorization": "Bearer bsk_guess"}
    assert [client.get("/metrics", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_a_barred_address_spends_its_own_rate_not_the_keys(make_app: Any) -> None:
    """A key used from outside its tenant's allowlist must not use up the rate of the key's owner."""
    app = make_app(role=None, api_rate_limit="2/minute")
    svc: Services = app.extensions["batchsvc"]
    svc.tenants.update("acme", ip_allowlist=["10.8.0.0/16"])
    acme = client_of(app, "acme")
    outside = [acme.get("/v1/batch", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code for _ in range(3)]
    assert outside == [403, 403, 429]  # counted against 203.0.113.9 at the deployment's rate...
    inside = [acme.get("/v1/batch", environ_base={"REMOTE_ADDR": "10.8.1.1"}).status_code for _ in range(3)]
    assert inside == [200, 200, 429]  # ...and the owner still has the key's whole rate


def test_ipv6_callers_without_a_key_share_a_bucket_per_64(make_app: Any) -> None:
    client = make_app(role=None, api_rate_limit="2/minute").test_client()
    wrong = {"Authorization": "Bearer bsk_guess"}

    def from_ip(address: str) -> int:
        return client.get("/v1/batch", headers=wrong, environ_base={"REMOTE_ADDR": address}).status_code

    assert [from_ip("2001:db8:1:2::1"), from_ip("2001:db8:1:2::ffff"), from_ip("2001:db8:1:2:abcd::9")] == [
        401,
        401,
        429,
    ]
    assert from_ip("2001:db8:1:3::1") == 401  # the next /64 is someone else


def test_the_rate_limit_is_shared_by_every_web_process(make_app: Any) -> None:
    """Counted in Redis: two apps (two gunicorn workers) draw on one bucket."""
    one = make_app()
    one.extensions["batchsvc"].tenants.update("default", rate_limit="2/minute")
    key = grant(one)
    other = make_app(role=None)
    headers = {"Authorization": f"Bearer {key}"}
    assert one.test_client().get("/v1/batch", headers=headers).status_code == 200
    assert other.test_client().get("/v1/batch", headers=headers).status_code == 200
    assert other.test_client().get("/v1/batch", headers=headers).status_code == 429


# --- quotas ----------------------------------------------------------------------------


def test_the_active_job_quota_stops_an_extra_job_and_keeps_nothing_of_it(app: Flask, client: FlaskClient) -> None:
    svc: Services = app.extensions["batchsvc"]
    svc.tenants.update("default", max_active_jobs=2)
    kept = [upload(client, lines(1), "instant-test").get_json()["job_id"] for _ in range(2)]
    before = stored_keys(app)

    refused = upload(client, lines(1), "instant-test")
    error = error_of(refused, 429, "rate_limited")
    assert refused.headers["Retry-After"] == "60"
    assert error["details"]["quota"] == "max_active_jobs" and error["details"]["max"] == 2
    assert [j["job_id"] for j in client.get("/v1/batch").get_json()["data"]] == kept[::-1]
    assert stored_keys(app) == before

    # Another tenant has its own count.
    assert upload(client_of(app, "other"), lines(1), "instant-test").status_code == 202
    # A job that ends frees its place (a cancelled one ends once a worker answered its requests).
    assert svc.jobs.fail(kept[0], [{"line": None, "code": "test", "message": "ended", "param": None}])
    assert svc.jobs.get(kept[0]).status is JobStatus.FAILED
    assert upload(client, lines(1), "instant-test").status_code == 202


def test_the_queued_request_quota_counts_unanswered_requests(app: Flask, client: FlaskClient) -> None:
    app.extensions["batchsvc"].tenants.update("default", max_queued_requests=10)
    assert upload(client, lines(6), "instant-test").status_code == 202
    before = stored_keys(app)

    error = error_of(upload(client, lines(5), "instant-test"), 429, "rate_limited")
    assert error["details"] == {"quota": "max_queued_requests", "max": 10, "current": 6, "retry_after": 60}
    assert stored_keys(app) == before  # the upload was stored, then dropped
    assert upload(client, lines(4), "instant-test").status_code == 202


def test_the_queued_request_quota_applies_to_openai_batches(app: Flask, client: FlaskClient) -> None:
    app.extensions["batchsvc"].tenants.update("default", max_queued_requests=5)
    form = {"purpose": "batch", "file": (io.BytesIO(lines(6)), "in.jsonl")}
    file_id = client.post("/v1/files", data=form).get_json()["id"]
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"model": "instant-test"},
    }
    error = error_of(client.post("/v1/batches", json=body), 429, "rate_limited")
    assert error["details"]["quota"] == "max_queued_requests"


def test_batches_of_one_file_all_count_until_validated(app: Flask, client: FlaskClient) -> None:
    """A batch counts its file's lines from the moment it is created, not only once prepared."""
    app.extensions["batchsvc"].tenants.update("default", max_queued_requests=8)
    form = {"purpose": "batch", "file": (io.BytesIO(lines(5)), "in.jsonl")}
    file_id = client.post("/v1/files", data=form).get_json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "metadata": {"model": "instant-test"}}
    assert client.post("/v1/batches", json={**body, "completion_window": "24h"}).status_code == 200
    error = error_of(client.post("/v1/batches", json={**body, "completion_window": "24h"}), 429, "rate_limited")
    assert (error["details"]["quota"], error["details"]["current"]) == ("max_queued_requests", 5)
    error_of(upload(client, lines(4), "instant-test"), 429, "rate_limited")


def test_a_fetched_file_over_the_quota_fails_in_prepare_and_runs_nothing(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    svc: Services = app.extensions["batchsvc"]
    svc.tenants.update("default", max_queued_requests=3)
    (tmp_path / "in.jsonl").write_bytes(lines(5))
    server = LoopbackHTTPServer(tmp_path).start()
    try:
        submitted = client.post("/v1/batch", json={"model": "instant-test", "input_file_url": f"{server.url}/in.jsonl"})
        job_id = submitted.get_json()["job_id"]
        assert prepare_job(svc, job_id) is None
    finally:
        server.stop()
    job = svc.jobs.get(job_id)
    assert job.status is JobStatus.FAILED
    assert [(e["code"], e["param"]) for e in job.errors] == [("quota_exceeded", "input_file_url")]
    assert "quota of 3" in job.errors[0]["message"]
    assert not [k for k in stored_keys(app) if "/shards/" in k]


def test_quotas_are_set_per_tenant_through_the_admin_api(app: Flask) -> None:
    admin = client_of(app, role=Role.ADMIN)
    shown = admin.patch("/v1/tenants/acme", json={"max_active_jobs": 1, "rate_limit": "100/hour"}).get_json()
    assert (shown["max_active_jobs"], shown["rate_limit"]) == (1, "100/hour")
    assert shown["max_queued_requests"] == app.extensions["batchsvc"].settings.tenant_max_queued_requests
    error = error_of(admin.patch("/v1/tenants/acme", json={"rate_limit": "lots"}), 422, "validation_error")
    assert "rate_limit" in error["details"]["fields"]
    acme = client_of(app, "acme")
    assert upload(acme, lines(1), "instant-test").status_code == 202
    error_of(upload(acme, lines(1), "instant-test"), 429, "rate_limited")


# --- body size -------------------------------------------------------------------------


@pytest.fixture
def served(make_app: Any) -> Iterator[tuple[Flask, int]]:
    """A small-limit app on a real HTTP server, so bodies arrive as a client streams them."""
    app = make_app(max_file_bytes=1000)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server.server_port
    server.shutdown()
    thread.join()


def _post_chunked(app: Flask, port: int, file_bytes: int) -> http.client.HTTPResponse:
    """POST a multipart upload with Transfer-Encoding: chunked: no Content-Length to trust."""
    key = grant(app)
    boundary = "batchsvcboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ninstant-test\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < file_bytes:
            chunk = lines(1)[: min(4096, file_bytes - sent)]
            sent += len(chunk)
            yield chunk
        yield tail

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/v1/batch",
        body=body(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        encode_chunked=True,
    )
    return conn.getresponse()


def test_an_oversized_upload_streamed_without_a_length_is_413_and_stores_nothing(served: tuple[Flask, int]) -> None:
    app, port = served
    response = _post_chunked(app, port, file_bytes=50_000)
    body = orjson.loads(response.read())
    assert response.status == 413
    assert body["error"]["type"] == "payload_too_large"
    assert body["error"]["details"]["limit"] == "max_file_bytes"
    assert stored_keys(app) == []
    assert app.extensions["batchsvc"].jobs.list_ids() == []


# Werkzeug's form parser stops mid-part and leaves its spool file to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_body_past_the_request_cap_streamed_without_a_length_is_413(served: tuple[Flask, int]) -> None:
    app, port = served
    response = _post_chunked(app, port, file_bytes=3 * 1024 * 1024)  # past max_file_bytes + 1 MiB of form
    assert response.status == 413
    assert orjson.loads(response.read())["error"]["type"] == "payload_too_large"
    assert stored_keys(app) == []
    gc.collect()  # here, under this test's filter


def test_a_small_chunked_upload_is_accepted(served: tuple[Flask, int]) -> None:
    app, port = served
    response = _post_chunked(app, port, file_bytes=len(lines(1)))
    assert response.status == 202, response.read()


# --- max_tokens ------------------------------------------------------------------------


def test_max_tokens_past_the_models_cap_fails_the_line(app: Flask, client: FlaskClient) -> None:
    svc: Services = app.extensions["batchsvc"]
    spec = svc.models.get("instant-test")
    assert spec is not None
    job_id = upload(client, lines(1, max_tokens=spec.max_tokens_cap + 1), "instant-test").get_json()["job_id"]
    assert prepare_job(svc, job_id) is None
    [error] = svc.jobs.get(job_id).errors
    assert (error["line"], error["param"]) == (1, "body.max_tokens")
    assert str(spec.max_tokens_cap) in error["message"]
