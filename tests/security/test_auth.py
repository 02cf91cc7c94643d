"""API keys and roles: Bearer keys on every endpoint but the health checks, kept
only as hashes, revocable, and a role decides what a key may do."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.access import Role
from batchsvc.store.keys import BOOTSTRAP_KEY_ID
from tests.support.client import error_of, grant, upload

LINE = orjson.dumps(
    {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
)

# Every endpoint that needs a key, with a method and a path to call it by.
PROTECTED = [
    ("post", "/v1/batch"),
    ("get", "/v1/batch"),
    ("get", "/v1/batch/batch_x"),
    ("get", "/v1/batch/batch_x/results"),
    ("get", "/v1/batch/batch_x/partial"),
    ("post", "/v1/batch/batch_x/cancel"),
    ("post", "/v1/batch/batch_x/retry"),
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/file-x"),
    ("get", "/v1/files/file-x/content"),
    ("delete", "/v1/files/file-x"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/batch_x"),
    ("post", "/v1/batches/batch_x/cancel"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/key_x"),
    ("get", "/v1/tenants/acme"),
    ("patch", "/v1/tenants/acme"),
    ("post", "/v1/tenants/acme/webhook_secret"),
    ("post", "/v1/admin/backup"),
    ("post", "/v1/admin/restore"),
    ("get", "/v1/reports/costs"),
    ("get", "/v1/estimates/est_x"),
    ("delete", "/v1/estimates/est_x"),
    ("get", "/v1/models"),
    ("get", "/v1/admin/workers"),
    ("post", "/v1/admin/workers/llm-gpu0@host/model"),
    ("get", "/metrics"),
    ("get", "/v1/no-such-endpoint"),  # unknown paths too: no key, no map of the API
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def anonymous(make_app: Any) -> FlaskClient:
    return make_app(role=None).test_client()


def test_every_endpoint_is_covered_by_the_list(app: Flask) -> None:
    """A new endpoint must join PROTECTED (or be one of the public ones)."""
    listed = {path for _, path in PROTECTED}
    # The API's description is public too (tests/unit/test_openapi.py reads it without a key).
    public = {"/healthz", "/readyz", "/v1/downloads/<token>", "/openapi.json", "/docs", "/docs/assets/<path:name>"}
    for rule in app.url_map.iter_rules():
        if rule.rule in public:
            continue
        example = (
            rule.rule.replace("<job_id>", "batch_x").replace("<batch_id>", "batch_x").replace("<estimate_id>", "est_x")
        )
        example = example.replace("<file_id>", "file-x").replace("<key_id>", "key_x").replace("<tenant>", "acme")
        example = example.replace("<name>", "llm-gpu0@host")
        assert example in listed, rule.rule


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_no_key_is_401(anonymous: FlaskClient, method: str, path: str) -> None:
    response = getattr(anonymous, method)(path)
    error = error_of(response, 401, "unauthorized")
    assert error["details"] == {"header": "Authorization"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer bsk_not-a-key-of-ours", "Bearer ", "Basic dXNlcjpwYXNz", "bsk_no-scheme", "Bearer  \t "],
)
def test_a_wrong_key_or_scheme_is_401(anonymous: FlaskClient, header: str) -> None:
    error_of(anonymous.get("/v1/batch", headers={"Authorization": header}), 401, "unauthorized")


def test_a_revoked_key_is_401_from_the_next_request(app: Flask, anonymous: FlaskClient) -> None:
    key = grant(app, role=Role.VIEWER)
    admin = grant(app, role=Role.ADMIN)
    assert anonymous.get("/v1/batch", headers=bearer(key)).status_code == 200
    key_id = app.extensions["batchsvc"].keys.authenticate(key).id

    revoked = anonymous.delete(f"/v1/keys/{key_id}", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None

    error = error_of(anonymous.get("/v1/batch", headers=bearer(key)), 401, "unauthorized")
    assert "revoked" in error["message"]


def test_health_checks_need_no_key(anonymous: FlaskClient) -> None:
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200


def test_a_viewer_reads_but_cannot_submit_cancel_or_retry(make_app: Any) -> None:
    client = make_app(role=Role.VIEWER).test_client()
    assert client.get("/v1/batch").status_code == 200
    assert client.get("/v1/batches").status_code == 200
    error = error_of(upload(client, LINE, "instant-test"), 403, "forbidden")
    assert error["details"] == {"role": "viewer", "required": "submitter"}
    for path in ("/v1/batch/batch_x/cancel", "/v1/batch/batch_x/retry", "/v1/batches/batch_x/cancel"):
        error_of(client.post(path), 403, "forbidden")
    error_of(client.post("/v1/files"), 403, "forbidden")
    error_of(client.post("/v1/batches", json={}), 403, "forbidden")


def test_a_submitter_submits_but_cannot_manage_keys_tenants_or_read_metrics(client: FlaskClient) -> None:
    assert upload(client, LINE, "instant-test").status_code == 202
    error_of(client.post("/v1/keys", json={"tenant": "default", "role": "admin"}), 403, "forbidden")
    error_of(client.get("/v1/keys"), 403, "forbidden")
    error_of(client.patch("/v1/tenants/default", json={"max_active_jobs": 1000}), 403, "forbidden")
    error_of(client.get("/metrics"), 403, "forbidden")


def test_an_admin_makes_a_key_shown_once_and_stored_only_as_a_hash(app: Flask, anonymous: FlaskClient) -> None:
    admin = bearer(grant(app, role=Role.ADMIN))
    made = anonymous.post("/v1/keys", json={"tenant": "acme", "role": "submitter", "name": "ci"}, headers=admin)
    assert made.status_code == 201
    body = made.get_json()
    key = body["key"]
    assert key.startswith("bsk_") and len(key) >= 40
    assert {k: body[k] for k in ("tenant", "role", "name", "revoked_at")} == {
        "tenant": "acme",
        "role": "submitter",
        "name": "ci",
        "revoked_at": None,
    }

    listed = anonymous.get("/v1/keys?tenant=acme", headers=admin).get_json()["data"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and key not in orjson.dumps(listed).decode()

    # Nothing in Redis holds the key itself.
    store = app.extensions["batchsvc"].keys
    for name in store.redis.scan_iter(f"{store.prefix}:*"):
        kind = store.redis.type(name)
        dump = repr(store.redis.hgetall(name) if kind == b"hash" else store.redis.dump(name)) + name.decode()
        assert key not in dump and key[4:] not in dump
    # ...and the key works, as what it was made for.
    assert anonymous.get("/v1/batch", headers=bearer(key)).status_code == 200


def test_key_creation_checks_its_fields(app: Flask, anonymous: FlaskClient) -> None:
    admin = bearer(grant(app, role=Role.ADMIN))
    error = error_of(
        anonymous.post("/v1/keys", json={"tenant": "acme", "role": "owner"}, headers=admin), 422, "validation_error"
    )
    assert "role" in error["details"]["fields"]
    error = error_of(
        anonymous.post("/v1/keys", json={"tenant": "Not A Tenant", "role": "viewer"}, headers=admin),
        422,
        "validation_error",
    )
    assert "tenant" in error["details"]["fields"]


def test_the_bootstrap_key_is_an_admin_of_the_default_tenant(make_app: Any) -> None:
    bootstrap = "demo-bootstrap-key-0123456789abcdef"
    app = make_app(role=None, bootstrap_api_key=bootstrap)
    client = app.test_client()
    made = client.post("/v1/keys", json={"tenant": "acme", "role": "viewer"}, headers=bearer(bootstrap))
    assert made.status_code == 201
    record = app.extensions["batchsvc"].keys.get(BOOTSTRAP_KEY_ID)
    assert (record.tenant, record.role) == ("default", Role.ADMIN)

    # A restart with another value replaces it: the old one stops working.
    make_app(role=None, bootstrap_api_key="another-bootstrap-key-0123456789")
    error_of(client.get("/v1/keys", headers=bearer(bootstrap)), 401, "unauthorized")


def test_a_revoked_bootstrap_key_stays_revoked_when_the_api_starts_with_it_again(make_app: Any) -> None:
    bootstrap = "demo-bootstrap-key-0123456789abcdef"
    client = make_app(role=None, bootstrap_api_key=bootstrap).test_client()
    assert client.delete(f"/v1/keys/{BOOTSTRAP_KEY_ID}", headers=bearer(bootstrap)).status_code == 200

    restarted = make_app(role=None, bootstrap_api_key=bootstrap).test_client()
    error_of(restarted.get("/v1/keys", headers=bearer(bootstrap)), 401, "unauthorized")
    # A new value is a new key.
    fresh = "fresh-bootstrap-key-0123456789abcdef"
    assert (
        make_app(role=None, bootstrap_api_key=fresh).test_client().get("/v1/keys", headers=bearer(fresh)).status_code
        == 200
    )


def test_a_short_bootstrap_key_stops_the_app_from_starting(make_app: Any) -> None:
    with pytest.raises(ValueError, match="at least 24 characters"):
        make_app(role=None, bootstrap_api_key="admin")


def test_the_openai_client_api_key_is_the_key(app: Flask) -> None:
    def client(api_key: str) -> openai.OpenAI:
        http = httpx2.Client(transport=httpx2.WSGITransport(app=app))
        return openai.OpenAI(base_url="http://batchsvc.test/v1", api_key=api_key, http_client=http, max_retries=0)

    with client(grant(app)) as ours:
        assert ours.batches.list().data == []
    with client("bsk_wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.batches.list()


# --- per-tenant client IP allowlist ---------------------------------------------------


def test_a_tenant_ip_allowlist_admits_only_its_networks(app: Flask, anonymous: FlaskClient) -> None:
    admin = bearer(grant(app, role=Role.ADMIN))
    acme = bearer(grant(app, tenant="acme", role=Role.VIEWER))
    set_list = anonymous.patch(
        "/v1/tenants/acme", json={"ip_allowlist": ["10.8.0.0/16", "2001:db8::/32"]}, headers=admin
    )
    assert set_list.get_json()["ip_allowlist"] == ["10.8.0.0/16", "2001:db8::/32"]

    def from_ip(address: str) -> int:
        return anonymous.get("/v1/batch", headers=acme, environ_base={"REMOTE_ADDR": address}).status_code

    assert from_ip("10.8.3.4") == 200
    assert from_ip("2001:db8::7") == 200
    assert from_ip("::ffff:10.8.3.4") == 200  # the same client, seen on a dual-stack socket
    error = error_of(
        anonymous.get("/v1/batch", headers=acme, environ_base={"REMOTE_ADDR": "203.0.113.9"}), 403, "forbidden"
    )
    assert error["details"] == {"client_ip": "203.0.113.9"}
    assert from_ip("127.0.0.1") == 403
    # Other tenants are not affected.
    assert anonymous.get("/v1/batch", headers=admin, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200
    # Cleared, it admits any address again.
    anonymous.patch("/v1/tenants/acme", json={"ip_allowlist": None}, headers=admin)
    assert from_ip("203.0.113.9") == 200


def test_a_bad_cidr_is_a_validation_error_naming_it(app: Flask, anonymous: FlaskClient) -> None:
    admin = bearer(grant(app, role=Role.ADMIN))
    response = anonymous.patch("/v1/tenants/acme", json={"ip_allowlist": ["10.0.0.0/8", "not-a-net"]}, headers=admin)
    error = error_of(response, 422, "validation_error")
    assert "not-a-net" in error["message"]
