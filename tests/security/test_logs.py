"""What leaves the process: the audit log names who did what and how it ended,
and neither the logs nor Sentry events carry a key, a secret or candidate data."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sentry_sdk
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.access import Role
from batchsvc.telemetry import init_sentry
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.support.client import grant, upload
from tests.support.http import LoopbackHTTPServer

SECRET_PROMPT = "Candidate Jane Roe, phone 555-0100, salary expectation 123456"
LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"messages": [{"role": "user", "content": SECRET_PROMPT}]},
}


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "batchsvc.audit"]


def test_each_call_writes_one_audit_line_naming_the_key_and_no_data(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, not only the audit's
    admin = grant(app, role=Role.ADMIN)
    as_admin = {"Authorization": f"Bearer {admin}"}
    svc = app.extensions["batchsvc"]
    submitter = svc.keys.list("default")[-1]  # the client's key: the first one made

    job_id = upload(client, orjson.dumps(LINE), "instant-test").get_json()["job_id"]
    client.get(f"/v1/batch/{job_id}/results")  # 409: not finished
    client.post(f"/v1/batch/{job_id}/cancel")
    made = client.post("/v1/keys", json={"tenant": "acme", "role": "viewer"}, headers=as_admin).get_json()
    client.delete(f"/v1/keys/{made['id']}", headers=as_admin)
    client.post("/v1/tenants/acme/webhook_secret", headers=as_admin)
    client.get("/v1/batch", headers={"Authorization": "Bearer bsk_wrong-key-never-logged"})

    lines = audit_lines(caplog)
    assert [(r["audit"], r.get("job_id"), r["status"], r["outcome"]) for r in lines] == [
        ("submit", job_id, 202, "ok"),
        ("results", job_id, 409, "error"),
        ("cancel", job_id, 200, "ok"),
        ("key_create", None, 201, "ok"),
        ("key_revoke", None, 200, "ok"),
        ("webhook_secret_rotate", None, 201, "ok"),
        ("authenticate", None, 401, "denied"),
    ]
    assert [r.get("key_id") for r in lines] == [submitter.id] * 3 + [svc.keys.authenticate(admin).id] * 3 + [None]
    assert [r.get("target_key_id") for r in lines[3:5]] == [made["id"]] * 2
    assert all(r["client_ip"] == "127.0.0.1" for r in lines)
    assert all(r["tenant"] == "default" for r in lines[:6])

    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET_PROMPT, admin, made["key"], "bsk_wrong-key-never-logged", TEST_WEBHOOK_SECRET):
        assert secret not in text
    assert svc.settings.signing_secret not in text
    assert "whsec_" not in text


def test_a_viewer_refused_is_audited_as_denied(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchsvc.audit")
    client = make_app(role=Role.VIEWER).test_client()
    assert upload(client, orjson.dumps(LINE), "instant-test").status_code == 403
    [line] = audit_lines(caplog)
    assert (line["audit"], line["status"], line["outcome"]) == ("submit", 403, "denied")


# --- Sentry ----------------------------------------------------------------------------


def _envelopes(server: LoopbackHTTPServer) -> list[bytes]:
    bodies = []
    for post in server.posts():
        encoding = {k.lower(): v for k, v in post.headers.items()}.get("content-encoding", "")
        body = post.body
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]

            body = brotli.decompress(body)
        bodies.append(body)
    return bodies


@pytest.fixture
def sentry_receiver(tmp_path: Any) -> Iterator[LoopbackHTTPServer]:
    """A real HTTP endpoint for the real Sentry SDK to send its envelopes to."""
    server = LoopbackHTTPServer(tmp_path).start()
    yield server
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: off again for the rest of the session
    server.stop()


def test_sentry_events_carry_no_body_prompt_or_key(make_app: Any, sentry_receiver: LoopbackHTTPServer) -> None:
    port = sentry_receiver.url.rsplit(":", 1)[1]
    app = make_app(sentry_dsn=f"http://publickey@127.0.0.1:{port}/1")
    assert sentry_sdk.get_client().is_active()

    def explode() -> None:
        prompt = SECRET_PROMPT  # a local the SDK must not capture  # noqa: F841
        raise RuntimeError("boom in a view")

    app.add_url_rule("/v1/explode", "explode", explode, methods=["POST"])
    key = grant(app)
    response = app.test_client().post(
        "/v1/explode", json={"prompt": SECRET_PROMPT}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 500
    assert response.get_json()["error"] == {"type": "internal_error", "message": "internal error", "details": {}}
    assert SECRET_PROMPT not in response.get_data(as_text=True)

    sentry_sdk.flush(timeout=10)
    sent = b"\n".join(_envelopes(sentry_receiver))
    assert b"boom in a view" in sent  # the event did go out...
    assert SECRET_PROMPT.encode() not in sent  # ...without the body or the local
    assert key.encode() not in sent


def test_init_sentry_is_off_without_a_dsn(settings: Any) -> None:
    assert init_sentry(settings, "web") is False
