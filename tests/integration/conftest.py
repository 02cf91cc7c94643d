"""Stacks of real components: Celery workers on the real Redis, the real vLLM
engine on the tiny model, storage on a moto S3 server or a local directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchsvc.settings import PROJECT_ROOT
from tests.conftest import make_settings
from tests.support.http import LoopbackHTTPServer
from tests.support.moto_server import MotoServer
from tests.support.stack import Stack, unique_names

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_exists() -> None:
    if not (PROJECT_ROOT / "var" / "models" / "tiny-random" / "config.json").exists():
        pytest.exit("the tiny model is missing: run scripts/setup.sh (make test does)", returncode=3)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHTTPServer]:
    server = LoopbackHTTPServer(tmp_path_factory.mktemp("served")).start()
    yield server
    server.stop()


def _stack(tmp: Path, **overrides: object) -> Iterator[Stack]:
    settings = make_settings(tmp, shard_size=256, webhook_backoff_s=0.5, **unique_names(), **overrides)
    stack = Stack(settings, tmp, llm_models=["tiny-random", "instant-test"])
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[Stack]:
    yield from _stack(
        tmp_path_factory.mktemp("s3-stack"),
        storage_backend="s3",
        s3_endpoint=moto.endpoint,
        s3_bucket="batchsvc-it",
        s3_access_key="test",
        s3_secret_key="test",
    )


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory.mktemp("local-stack"))
