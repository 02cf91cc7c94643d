"""Flask test-client helpers shared by the web and integration tests."""

from __future__ import annotations

import io
from typing import Any

import orjson
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from batchsvc.access import Role


def upload(
    client: FlaskClient, data: bytes, model: str, *, headers: dict[str, str] | None = None, **fields: Any
) -> TestResponse:
    """POST /v1/batch as multipart, the JSONL in the `file` part."""
    form: dict[str, Any] = {"model": model, **fields}
    if "metadata" in form and not isinstance(form["metadata"], str):
        form["metadata"] = orjson.dumps(form["metadata"]).decode()
    form["file"] = FileStorage(io.BytesIO(data), "input.jsonl", content_type="application/jsonl")
    # Encoded in memory: the test client's own encoder spills big bodies to a temp file it never closes.
    boundary, body = encode_multipart(form)
    content_type = f"multipart/form-data; boundary={boundary}"
    return client.post("/v1/batch", data=body, content_type=content_type, headers=headers)


def error_of(response: TestResponse, status: int, type_: str) -> dict[str, Any]:
    """Check the one error envelope and return its inner object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "message", "details"}
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert "Traceback" not in response.get_data(as_text=True)
    return error


def keyed_client_class(key: str) -> type[FlaskClient]:
    """A test client class that sends `key` as its Bearer token unless a request
    sets its own Authorization header."""

    class KeyedClient(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"

    return KeyedClient


def keyed_client(app: Flask, key: str) -> FlaskClient:
    """A test client of `app` that calls with `key`."""
    return keyed_client_class(key)(app, TestResponse, use_cookies=False)


def grant(app: Flask, tenant: str = "default", role: Role = Role.SUBMITTER) -> str:
    """A new API key of `tenant` with `role`, straight from the app's key store."""
    _, key = app.extensions["batchsvc"].keys.create(tenant, role, "test")
    return key


def client_of(app: Flask, tenant: str = "default", role: Role = Role.SUBMITTER) -> FlaskClient:
    """A test client of `app` calling as a new key of `tenant` with `role`."""
    return keyed_client(app, grant(app, tenant, role))


def authorize(app: Flask, tenant: str = "default", role: Role = Role.SUBMITTER) -> str:
    """Make `app.test_client()` call as a new key of `tenant` with `role`; returns the key."""
    key = grant(app, tenant, role)
    app.test_client_class = keyed_client_class(key)
    return key
