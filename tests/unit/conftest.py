"""Fixtures of the Flask-level unit tests: apps on private queues, cleaned up after."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from batchsvc.access import Role
from batchsvc.services import Services
from batchsvc.settings import Settings
from tasks.names import queue_keys
from tests.conftest import make_settings
from tests.support.client import authorize


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A queue of our own on the broker DB, so nothing we enqueue collides with other tests.
    return make_settings(tmp_path, cpu_queue=f"test-{uuid.uuid4().hex[:12]}")


def _purge_broker(settings: Settings) -> None:
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        keys = set(queue_keys(settings.cpu_queue))
        keys.update(broker.scan_iter(f"*{settings.cpu_queue}*", count=1000))
        broker.delete(*keys)
    finally:
        broker.close()


@pytest.fixture
def make_app(settings: Settings, services: Services) -> Iterator[Any]:
    """Apps on these settings (or variants of them); `services` drops their Redis keys afterwards."""
    apps: list[Flask] = []

    def make(*, role: Role | None = Role.SUBMITTER, **overrides: Any) -> Flask:
        """An app whose test clients call as a fresh key of the default tenant
        with `role` (None: no key; the app's Redis may be down on purpose)."""
        from web import create_app

        app = create_app(dataclasses.replace(settings, **overrides))
        apps.append(app)
        if role is not None:
            authorize(app, role=role)
        return app

    yield make
    for app in apps:
        app.extensions["celery"].close()
    _purge_broker(settings)


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    """The OpenAPI document the app serves."""
    return client.get("/openapi.json").get_json()
