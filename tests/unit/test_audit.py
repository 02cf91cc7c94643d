"""The audit log: one line per state-changing or data-reading call, with no
key, secret or candidate data in it."""

from __future__ import annotations

import logging

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support.client import upload

SECRET_PROMPT = "Candidate Jane Roe, phone 555-0100, salary expectation 123456"


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "batchsvc.audit"]


def test_submit_cancel_and_results_each_write_one_line_without_data(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchsvc.audit")
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": SECRET_PROMPT}]},
    }
    job_id = upload(client, orjson.dumps(line), "instant-test").get_json()["job_id"]
    client.get(f"/v1/batch/{job_id}/results")  # 409: not finished
    client.post(f"/v1/batch/{job_id}/cancel", headers={"Authorization": "Bearer sk-should-never-be-logged"})

    lines = audit_lines(caplog)
    assert [(r["audit"], r["job_id"], r["outcome"]) for r in lines] == [
        ("submit", job_id, "ok"),
        ("results", job_id, "error"),
        ("cancel", job_id, "ok"),
    ]
    assert all(r["tenant"] == "default" and r["client_ip"] for r in lines)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET_PROMPT not in text
    assert "sk-should-never-be-logged" not in text
    assert app.extensions["batchsvc"].settings.signing_secret not in text
