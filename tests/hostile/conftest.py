"""The hostile-input suite (issue 9): what a careless or hostile client can send,
against the Flask-level fixtures of the unit tests (a real Redis, no workers) and,
where the HTTP server is the subject, against the server the Procfile runs."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchsvc.access import DEFAULT_TENANT, Role
from batchsvc.services import Services
from batchsvc.settings import PROJECT_ROOT
from scripts.stack import procfile
from tests.conftest import make_settings
from tests.support.invariants import INSTANT_MODEL
from tests.support.moto_server import free_port
from tests.support.stack import Stack, settings_env, stop_group, unique_names, wait_until
from tests.unit.conftest import app, client, make_app, settings

__all__ = ["app", "client", "make_app", "settings"]


@pytest.fixture(scope="module")
def instant_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Real workers on the instant engine. Shards of 100 so a few hundred requests
    make several; 10 ms per request (BATCHSVC_INSTANT_DELAY_S) so a job runs long
    enough to be retried and cancelled while it runs."""
    tmp = tmp_path_factory.mktemp("hostile-stack")
    settings = make_settings(tmp, shard_size=100, progress_every=20, **unique_names())
    stack = Stack(settings, tmp, llm_models=[INSTANT_MODEL], llm_env={"BATCHSVC_INSTANT_DELAY_S": "0.01"})
    try:
        yield stack.start()
    finally:
        stack.stop()


@dataclass
class Served:
    """The API as the Procfile's `web` entry serves it, on a loopback port."""

    url: str
    host: str
    port: int
    key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """gunicorn started with the Procfile's own command line and its default
    settings, but a private Redis prefix, queues and storage."""
    yield from serve(tmp_path_factory.mktemp("served"))


def serve(tmp: Path, role: Role = Role.SUBMITTER, **overrides: object) -> Iterator[Served]:
    """Run the Procfile's `web` entry, its settings passed the way workers get theirs,
    with a key of `role` for the default tenant."""
    settings = make_settings(tmp, **unique_names(), **overrides)
    command = procfile()["web"]
    port = free_port()
    env = {**os.environ, **settings_env(settings), "PORT": str(port), "BIND_HOST": "127.0.0.1"}
    log_path = tmp / "web.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    svc = Services(settings)
    _, key = svc.keys.create(DEFAULT_TENANT, role, "hostile")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()}") from None
            return False

    try:
        wait_until(up, 60, what="gunicorn to answer /healthz")
        yield Served(url, "127.0.0.1", port, key, process, log_path)
    finally:
        stop_group(process)
        for found in svc.jobs.redis.scan_iter(f"{settings.redis_prefix}:*"):
            svc.jobs.redis.delete(found)
