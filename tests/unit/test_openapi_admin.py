"""The admin, fleet and backup views as declared with flask-smorest: each
operation in /openapi.json with its parameters, body and answer; the real answers
conform to those schemas and keep every key the views build (the secrets shown
once included, and none added to a listing); the checks that moved into schemas
answer 422 naming the field, and only after the role check."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from batchsvc.access import TENANT_PATTERN, Role
from batchsvc.pipeline.backup import backup, restore
from batchsvc.services import Services
from batchsvc.store.workers import WorkerRecord, WorkerState
from tests.support.client import client_of, error_of
from web import admin_schemas

# (method, path in the document, success status, its schema, the request body's schema or None)
OPERATIONS = [
    ("post", "/v1/keys", "201", "CreatedKey", "CreateKey"),
    ("get", "/v1/keys", "200", "KeyList", None),
    ("delete", "/v1/keys/{key_id}", "200", "Key", None),
    ("get", "/v1/tenants/{tenant}", "200", "Tenant", None),
    ("patch", "/v1/tenants/{tenant}", "200", "Tenant", "TenantUpdate"),
    ("post", "/v1/tenants/{tenant}/webhook_secret", "201", "RotatedSecret", "RotateSecretBody"),
    ("get", "/v1/models", "200", "ModelList", None),
    ("get", "/v1/admin/workers", "200", "WorkerList", None),
    ("post", "/v1/admin/workers/{name}/model", "202", "Worker", "Swap"),
    ("post", "/v1/admin/backup", "201", "Backup", None),
    ("post", "/v1/admin/restore", "200", "RestoreResult", "Restore"),
]


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    return client_of(app, role=Role.ADMIN)


def component(document: dict[str, Any], ref: dict[str, Any]) -> str:
    return ref["$ref"].removeprefix("#/components/schemas/")


def properties(document: dict[str, Any], name: str) -> set[str]:
    return set(document["components"]["schemas"][name]["properties"])


def check_against_document(document: dict[str, Any], method: str, path: str, response: TestResponse) -> None:
    """The answer's body is valid against the schema the document gives for its status."""
    media = document["paths"][path][method]["responses"][str(response.status_code)]["content"]
    assert response.mimetype == "application/json" and "application/json" in media
    schema = {**media["application/json"]["schema"], "components": document["components"]}
    OAS30Validator(schema).validate(response.get_json())


def dumps_unchanged(schema: Schema, raw: dict[str, Any]) -> bool:
    """The response schema writes back exactly what the view built (same keys, an int stays an int)."""
    return orjson.dumps(schema.dump(raw), option=orjson.OPT_SORT_KEYS) == orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)


def worker(services: Services, name: str = "llm-gpu0@host", **fields: Any) -> WorkerRecord:
    return services.workers.save(WorkerRecord(name=name, queues=["llm.tiny-random"], devices="0", **fields))


# --- the document ----------------------------------------------------------------------


def test_the_document_is_valid_and_declares_every_admin_operation(document: dict[str, Any]) -> None:
    validate(document)
    for method, path, status, answer, body in OPERATIONS:
        operation = document["paths"][path][method]
        assert operation["summary"], (method, path)
        [media] = operation["responses"][status]["content"].values()
        assert component(document, media["schema"]) == answer, (method, path)
        assert "default" in operation["responses"]  # the error envelope
        if body is None:
            assert "requestBody" not in operation, (method, path)
        else:
            assert component(document, operation["requestBody"]["content"]["application/json"]["schema"]) == body


def test_bodies_that_may_be_left_out_are_documented_as_optional(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert paths["/v1/tenants/{tenant}/webhook_secret"]["post"]["requestBody"]["required"] is False
    assert paths["/v1/admin/restore"]["post"]["requestBody"]["required"] is False
    assert paths["/v1/admin/workers/{name}/model"]["post"]["requestBody"]["required"] is True
    assert paths["/v1/keys"]["post"]["requestBody"]["required"] is True


def test_parameters_are_documented_with_their_rules(document: dict[str, Any]) -> None:
    [tenant] = document["paths"]["/v1/keys"]["get"]["parameters"]
    assert (tenant["in"], tenant["name"], tenant["required"]) == ("query", "tenant", False)
    assert tenant["schema"]["pattern"] == TENANT_PATTERN
    for path in ("/v1/tenants/{tenant}", "/v1/tenants/{tenant}/webhook_secret"):
        [param] = document["paths"][path]["parameters"]
        assert (param["in"], param["name"], param["schema"]["pattern"]) == ("path", "tenant", TENANT_PATTERN)
    schemas = document["components"]["schemas"]
    assert schemas["CreateKey"]["properties"]["role"]["enum"] == ["viewer", "submitter", "admin"]
    assert schemas["Swap"]["required"] == ["model"]
    assert schemas["Restore"]["properties"]["backup"]["pattern"] == "^backups/state/[^/]+$"
    assert schemas["Worker"]["properties"]["state"]["enum"] == ["starting", "loading", "idle", "busy", "swapping"]


def test_secrets_are_documented_in_the_one_answer_that_shows_them(document: dict[str, Any]) -> None:
    assert "key" in properties(document, "CreatedKey")
    assert "key" not in properties(document, "Key")
    items = document["components"]["schemas"]["KeyList"]["properties"]["data"]["items"]
    assert component(document, items) == "Key"
    assert "secret" in properties(document, "RotatedSecret")
    dates = document["components"]["schemas"]["Tenant"]["properties"]["webhook_secrets"]["items"]
    assert properties(document, component(document, dates)) == {"created_at", "retire_at"}


# --- the answers -----------------------------------------------------------------------


def test_every_admin_answer_conforms_to_its_documented_schema(
    admin: FlaskClient, services: Services, document: dict[str, Any]
) -> None:
    def call(method: str, path: str, url: str, status: int, **kwargs: Any) -> dict[str, Any]:
        response = getattr(admin, method)(url, **kwargs)
        assert response.status_code == status, response.get_data(as_text=True)
        check_against_document(document, method, path, response)
        return response.get_json()

    made = call("post", "/v1/keys", "/v1/keys", 201, json={"tenant": "acme", "role": "viewer", "name": "ci"})
    call("get", "/v1/keys", "/v1/keys?tenant=acme", 200)
    call("delete", "/v1/keys/{key_id}", f"/v1/keys/{made['id']}", 200)
    patch = {"max_active_jobs": 3, "ip_allowlist": ["10.0.0.0/8"], "rate_limit": "5/second"}
    call("patch", "/v1/tenants/{tenant}", "/v1/tenants/acme", 200, json=patch)
    call("post", "/v1/tenants/{tenant}/webhook_secret", "/v1/tenants/acme/webhook_secret", 201)
    call("get", "/v1/tenants/{tenant}", "/v1/tenants/acme", 200)  # with a retiring secret and a live one
    worker(services, model="tiny-random", state=WorkerState.BUSY, current_shard="batch_x/0", pid=7, engine_load_s=4.2)
    worker(services, "llm-gpu1@host", last_swap={"unload_s": 0.5, "load_s": 3.0})  # nothing loaded yet
    call("get", "/v1/models", "/v1/models", 200)
    call("get", "/v1/admin/workers", "/v1/admin/workers", 200)
    body = {"model": "tiny-random-2k"}
    call("post", "/v1/admin/workers/{name}/model", "/v1/admin/workers/llm-gpu0@host/model", 202, json=body)
    made_backup = call("post", "/v1/admin/backup", "/v1/admin/backup", 201)
    call("post", "/v1/admin/restore", "/v1/admin/restore", 200)
    call("post", "/v1/admin/restore", "/v1/admin/restore", 200, json={"backup": made_backup["key"]})


def test_the_response_schemas_write_every_key_the_views_build(app: Flask, services: Services) -> None:
    record, key = services.keys.create("acme", Role.VIEWER, "ci")
    assert dumps_unchanged(admin_schemas.CreatedKeySchema(), {**record.public(), "key": key})
    assert dumps_unchanged(admin_schemas.KeySchema(), services.keys.revoke(record.id).public())
    services.tenants.update("acme", ip_allowlist=["10.0.0.0/8"], max_active_jobs=2)
    services.tenants.rotate_webhook_secret("acme", 60)
    services.tenants.rotate_webhook_secret("acme", 60)
    assert dumps_unchanged(admin_schemas.TenantSchema(), services.tenants.get("acme").public(services.settings))
    busy = worker(services, model="tiny-random", state=WorkerState.BUSY, pid=7, engine_loaded_at=1.5, engine_load_s=4.2)
    swapped = worker(services, "llm-gpu1@host", swap_to="tiny-random", last_swap={"unload_s": 0.5}, shards_run=3)
    for shown in (busy, swapped, WorkerRecord(name="new@host")):
        assert dumps_unchanged(admin_schemas.WorkerSchema(), shown.public())
    assert dumps_unchanged(admin_schemas.WorkerSchema(), {"name": "gone@host"})  # the swap's answer once it left
    made = backup(services)
    assert dumps_unchanged(admin_schemas.BackupSchema(), dataclasses.asdict(made))
    assert dumps_unchanged(admin_schemas.RestoreResultSchema(), dataclasses.asdict(restore(services, made.key)))


def test_a_created_key_and_a_rotated_secret_are_shown_once_and_never_listed(admin: FlaskClient) -> None:
    made = admin.post("/v1/keys", json={"tenant": "acme", "role": "viewer"}).get_json()
    assert made["key"].startswith("bsk_")
    listed = admin.get("/v1/keys?tenant=acme").get_json()["data"]
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0] and made["key"] not in repr(listed)
    assert "key" not in admin.delete(f"/v1/keys/{made['id']}").get_json()

    rotated = admin.post("/v1/tenants/acme/webhook_secret").get_json()
    assert rotated["secret"].startswith("whsec_")
    shown = admin.get("/v1/tenants/acme").get_json()
    assert rotated["secret"] not in repr(shown)
    assert all(set(s) == {"created_at", "retire_at"} for s in shown["webhook_secrets"])


# --- the checks that moved into schemas ------------------------------------------------


def test_a_misspelt_keys_parameter_is_a_422_not_every_tenant_s_keys(admin: FlaskClient) -> None:
    admin.post("/v1/keys", json={"tenant": "acme", "role": "viewer"})
    error = error_of(admin.get("/v1/keys?tenat=acme"), 422, "validation_error")
    assert error["details"]["fields"] == {"tenat": ["Unknown field."]}
    error = error_of(admin.get("/v1/keys?tenant=Not%20A%20Tenant"), 422, "validation_error")
    assert list(error["details"]["fields"]) == ["tenant"]


def test_schemathesis_finding_a_restore_of_no_single_backup_object_is_a_422_not_a_500(
    admin: FlaskClient, services: Services
) -> None:
    """schemathesis sent {"backup": "backups/state/"}: the prefix matched, and storage then
    refused the key with a ValueError, a 500. Folders, '..' and empty segments are 422s."""
    assert admin.post("/v1/admin/backup").status_code == 201
    for key in ("backups/state/", "backups/state/..", "backups/state//x", "backups/state/a/b", "backups/state/."):
        error = error_of(admin.post("/v1/admin/restore", json={"backup": key}), 422, "validation_error")
        assert list(error["details"]["fields"]) == ["backup"], key


def test_a_restore_with_a_misspelt_field_restores_nothing(admin: FlaskClient, services: Services) -> None:
    """Before the schema, any body without `backup` restored the latest backup."""
    services.tenants.update("acme", max_active_jobs=7)
    assert admin.post("/v1/admin/backup").status_code == 201
    services.tenants.update("acme", max_active_jobs=None)  # gone from Redis: a restore would bring it back
    for body in ({"backups": "backups/state/x.json.gz"}, {"backup": 3}, {"backup": "etc/passwd"}):
        error = error_of(admin.post("/v1/admin/restore", json=body), 422, "validation_error")
        assert list(error["details"]["fields"]) == list(body), body
    for text in (b"backup=latest", b"[]"):
        error_of(admin.post("/v1/admin/restore", data=text, content_type="application/json"), 400, "invalid_request")
    assert services.tenants.get("acme").max_active_jobs is None
    assert admin.post("/v1/admin/restore").get_json()["restored"] == 1  # the empty body: the latest
    assert services.tenants.get("acme").max_active_jobs == 7


def test_a_swap_body_is_checked_by_its_schema(admin: FlaskClient, services: Services) -> None:
    worker(services, model="tiny-random", state=WorkerState.IDLE)
    url = "/v1/admin/workers/llm-gpu0@host/model"
    error = error_of(admin.post(url, json={"model": "tiny-random-2k", "modle": "x"}), 422, "validation_error")
    assert error["details"]["fields"] == {"modle": ["Unknown field."]}
    error = error_of(admin.post(url, json={"model": None}), 422, "validation_error")
    assert error["details"]["fields"]["model"] == [f"one of: {', '.join(services.models.aliases())}"]
    assert services.workers.pending_swap("llm-gpu0@host") is None


def test_a_webhook_secret_that_cannot_sign_is_a_422_naming_it_and_changes_nothing(
    admin: FlaskClient, services: Services
) -> None:
    response = admin.post("/v1/tenants/acme/webhook_secret", json={"secret": "whsec_not-base64!!"})
    error = error_of(response, 422, "validation_error")
    assert list(error["details"]["fields"]) == ["secret"] and "base64" in error["message"]
    assert "not-base64" not in response.get_data(as_text=True)
    error_of(admin.post("/v1/tenants/acme/webhook_secret", json={"secrt": "whsec_AAAA"}), 422, "validation_error")
    assert services.tenants.get("acme").webhook_secrets == []


def test_a_tenant_allowlist_is_normalised_or_refused_by_its_schema(admin: FlaskClient) -> None:
    shown = admin.patch("/v1/tenants/acme", json={"ip_allowlist": ["10.1.2.3/8", "2001:db8::1/32"]}).get_json()
    assert shown["ip_allowlist"] == ["10.0.0.0/8", "2001:db8::/32"]
    error = error_of(admin.patch("/v1/tenants/acme", json={"ip_allowlist": ["nope"]}), 422, "validation_error")
    assert list(error["details"]["fields"]) == ["ip_allowlist"]
    assert admin.get("/v1/tenants/acme").get_json()["ip_allowlist"] == ["10.0.0.0/8", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/v1/keys", {"tenant": "Not A Tenant", "role": "owner"}),
        ("get", "/v1/keys?tenat=acme", None),
        ("patch", "/v1/tenants/acme", {"max_active_jobs": "many"}),
        ("post", "/v1/tenants/acme/webhook_secret", {"secret": 3}),
        ("post", "/v1/admin/workers/llm-gpu0@host/model", {"model": "gpt-17"}),
        ("post", "/v1/admin/restore", {"backup": "etc/passwd"}),
    ],
)
def test_a_key_without_the_admin_role_is_refused_before_its_body_is_read(
    app: Flask, method: str, url: str, body: Any
) -> None:
    viewer = client_of(app, role=Role.VIEWER)
    error = error_of(getattr(viewer, method)(url, json=body), 403, "forbidden")
    assert error["details"] == {"role": "viewer", "required": "admin"}


def test_a_body_refused_by_its_schema_is_still_audited(admin: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchsvc.audit")
    error_of(admin.patch("/v1/tenants/acme", json={"rate_limit": "lots"}), 422, "validation_error")
    error_of(admin.post("/v1/admin/workers/nobody@host/model", json={"modle": "x"}), 422, "validation_error")
    error_of(admin.post("/v1/admin/restore", json={"backup": "etc/passwd"}), 422, "validation_error")
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "batchsvc.audit"]
    assert [(r["audit"], r["status"], r["outcome"]) for r in lines] == [
        ("tenant_update", 422, "error"),
        ("worker_swap", 422, "error"),
        ("restore", 422, "error"),
    ]
    assert lines[0]["target_tenant"] == "acme"
