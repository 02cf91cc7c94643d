"""Fixtures shared by every test level.

Tests never touch the databases a running `make up` stack uses: they take Redis
databases 10-13 on the machine's Redis (or REDIS_URL's host) and a key prefix
unique to the test session.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from batchsvc.services import Services
from batchsvc.settings import PROJECT_ROOT, Settings, load_settings
from batchsvc.store.jobs import JobStore

REDIS_BASE = os.environ.get("BATCHSVC_TEST_REDIS", "redis://127.0.0.1:6379")
TEST_MODELS_FILE = PROJECT_ROOT / "tests" / "models.yaml"
# Webhooks in tests are signed, so receivers in tests can verify them.
TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"batchsvc test webhook secret 32b").decode()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: private Redis databases and prefix, storage under tmp_path."""
    values: dict[str, object] = {
        "broker_url": f"{REDIS_BASE}/10",
        "result_backend": f"{REDIS_BASE}/11",
        "state_redis_url": f"{REDIS_BASE}/12",
        "ratelimit_storage_url": f"{REDIS_BASE}/13",
        "redis_prefix": f"test-{uuid.uuid4().hex[:8]}",
        "storage_backend": "local",
        "storage_local_root": str(tmp_path / "storage"),
        "models_file": str(TEST_MODELS_FILE),
        "signing_secret": "test-signing-secret",
        "schedule_file": str(tmp_path / "no-schedule.yaml"),
        "webhook_secrets": TEST_WEBHOOK_SECRET,
        # Test receivers and file servers listen on loopback, which the SSRF guard refuses otherwise.
        "outbound_allowlist": "127.0.0.1",
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def services(settings: Settings, redis_available: None) -> Iterator[Services]:
    svc = Services(settings)
    yield svc
    _drop_prefix(svc.jobs)


def _drop_prefix(store: JobStore) -> None:
    keys = list(store.redis.scan_iter(f"{store.prefix}:*", count=1000))
    if keys:
        store.redis.delete(*keys)


@pytest.fixture(scope="session")
def redis_available() -> None:
    try:
        redis.Redis.from_url(f"{REDIS_BASE}/12", socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # the suite needs a real Redis; say so plainly
        pytest.exit(f"tests need Redis at {REDIS_BASE} ({exc}); run scripts/setup.sh", returncode=3)
