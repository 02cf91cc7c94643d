"""A bad models.yaml entry stops a worker at start, before it takes a task, with
a message naming the entry and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from batchsvc.settings import PROJECT_ROOT
from tests.conftest import make_settings
from tests.support.stack import settings_env, unique_names


def test_a_worker_does_not_start_with_a_bad_models_entry(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    entry = {"model": "var/models/tiny-random", "engine_args": {"max_model_len": 2048, "kv_cache_dtype": "int4"}}
    models.write_text(yaml.safe_dump({"models": {"tiny-random": entry}}))
    env = {**os.environ, **settings_env(make_settings(tmp_path, models_file=str(models), **unique_names()))}

    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--pool", "solo", "-n", "bad@test"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert worker.returncode != 0
    assert "model 'tiny-random': engine_args.kv_cache_dtype: 'int4' is not allowed" in worker.stderr
    assert "fp8_e4m3" in worker.stderr  # the allowed values
    assert "ready." not in worker.stdout + worker.stderr
