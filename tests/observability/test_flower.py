"""Flower, as the Procfile starts it, asks for the user and password of the settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from batchsvc.settings import PROJECT_ROOT
from tests.conftest import make_settings
from tests.support.moto_server import free_port
from tests.support.stack import settings_env, stop_group, wait_until


def test_flower_needs_the_basic_auth_of_the_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, flower_user="ops", flower_password="flower-test-password")
    port = free_port()
    command = [
        sys.executable, "-m", "celery", "-A", "tasks.worker", "flower",
        "--conf=tasks/flowerconfig.py", "--address=127.0.0.1", f"--port={port}",
    ]  # fmt: skip
    env = {**os.environ, **settings_env(settings)}
    with (tmp_path / "flower.log").open("wb") as log:
        flower = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}/"  # the dashboard: open to anyone unless basic auth is on

        def status(auth: tuple[str, str] | None) -> int | None:
            try:
                return requests.get(url, auth=auth, timeout=5).status_code
            except requests.ConnectionError:
                return None

        assert wait_until(lambda: status(None), 60, what="flower to listen") == 401
        assert status(("ops", "wrong")) == 401
        assert status(("ops", "flower-test-password")) == 200
    finally:
        stop_group(flower)
