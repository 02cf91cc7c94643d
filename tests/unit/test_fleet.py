"""The model catalogue (`GET /v1/models`), the admin view of LLM workers and the
hot-swap request, through the Flask test client on real Redis; worker records
are written as a worker writes them (batchsvc/store/workers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.services import Services
from batchsvc.store.keys import Role
from batchsvc.store.workers import WorkerRecord, WorkerState, WorkerStore
from tests.support.client import client_of, error_of
from tests.support.stack import wait_until


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    return client_of(app, role=Role.ADMIN)


def worker(services: Services, name: str = "llm-gpu0@host", **fields: Any) -> WorkerRecord:
    record = WorkerRecord(name=name, queues=["llm.tiny-random"], devices="0", **fields)
    return services.workers.save(record)


def test_models_lists_the_catalogue_in_openais_shape(app: Flask, services: Services) -> None:
    body = client_of(app, role=Role.VIEWER).get("/v1/models").get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == services.models.aliases()
    for model in body["data"]:
        assert model["object"] == "model" and model["owned_by"] == "batchsvc"
        assert isinstance(model["created"], int)
        assert model["live_workers"] == []


def test_models_shows_which_models_have_a_live_worker_now(client: FlaskClient, services: Services) -> None:
    worker(services, model="tiny-random", state=WorkerState.BUSY)
    worker(services, "llm-gpu1@host", model="tiny-random", state=WorkerState.IDLE)
    worker(services, "llm-gpu2@host", model="tiny-random-2k", state=WorkerState.LOADING)  # not serving yet
    live = {m["id"]: m["live_workers"] for m in client.get("/v1/models").get_json()["data"]}
    assert live["tiny-random"] == ["llm-gpu0@host", "llm-gpu1@host"]
    assert live["tiny-random-2k"] == [] and live["instant-test"] == []


def test_a_worker_that_stops_writing_its_record_drops_out(services: Services) -> None:
    store = WorkerStore(services.state_redis, services.settings.redis_prefix, ttl_s=0.2)
    store.save(WorkerRecord(name="gone@host", model="tiny-random", state=WorkerState.IDLE))
    assert [w.name for w in store.live()] == ["gone@host"]
    wait_until(lambda: store.live() == [], 5, interval=0.05, what="the record to expire")
    assert not services.state_redis.sismember(f"{services.settings.redis_prefix}:workers", "gone@host")


def test_admins_list_workers_with_model_state_shard_and_load_time(admin: FlaskClient, services: Services) -> None:
    worker(services, model="tiny-random", state=WorkerState.BUSY, current_shard="batch_x/3", engine_load_s=4.2)
    [shown] = admin.get("/v1/admin/workers").get_json()["data"]
    assert shown["name"] == "llm-gpu0@host"
    assert (shown["model"], shown["state"], shown["current_shard"]) == ("tiny-random", "busy", "batch_x/3")
    assert shown["engine_load_s"] == 4.2 and shown["devices"] == "0" and shown["queues"] == ["llm.tiny-random"]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUBMITTER])
def test_only_admins_see_and_swap_workers(app: Flask, services: Services, role: Role) -> None:
    worker(services, model="tiny-random", state=WorkerState.IDLE)
    client = client_of(app, role=role)
    error_of(client.get("/v1/admin/workers"), 403, "forbidden")
    error_of(client.post("/v1/admin/workers/llm-gpu0@host/model", json={"model": "tiny-random-2k"}), 403, "forbidden")
    assert services.workers.pending_swap("llm-gpu0@host") is None


def test_a_swap_is_asked_for_and_shown_until_the_worker_does_it(admin: FlaskClient, services: Services) -> None:
    worker(services, model="tiny-random", state=WorkerState.BUSY)
    response = admin.post("/v1/admin/workers/llm-gpu0@host/model", json={"model": "tiny-random-2k"})
    assert response.status_code == 202
    assert (response.get_json()["swap_to"], response.get_json()["state"]) == ("tiny-random-2k", "swapping")
    assert services.workers.pending_swap("llm-gpu0@host")["model"] == "tiny-random-2k"
    worker(services, model="tiny-random", state=WorkerState.BUSY)  # the heartbeat rewrites the record...
    assert services.workers.get("llm-gpu0@host").swap_to == "tiny-random-2k"  # ...and the request stays


@pytest.mark.parametrize("body", [{"model": "gpt-17"}, {}, {"model": 3}, None])
def test_a_swap_to_a_model_not_in_the_catalogue_is_422(admin: FlaskClient, services: Services, body: Any) -> None:
    worker(services, model="tiny-random", state=WorkerState.IDLE)
    error = error_of(admin.post("/v1/admin/workers/llm-gpu0@host/model", json=body), 422, "validation_error")
    assert "model" in error["details"]["fields"]
    assert "tiny-random-2k" in error["details"]["fields"]["model"][0]


def test_a_swap_of_a_worker_that_is_not_live_is_404(admin: FlaskClient) -> None:
    error = error_of(admin.post("/v1/admin/workers/nobody@host/model", json={"model": "tiny-random"}), 404, "not_found")
    assert "nobody@host" in error["message"]
