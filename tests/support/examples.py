"""The candidate-scoring example requests of scripts/make_examples.py, for tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import orjson

from batchsvc.settings import PROJECT_ROOT


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_examples", PROJECT_ROOT / "scripts" / "make_examples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def candidate_requests(count: int, model: str = "tiny-random", seed: int = 7) -> list[dict]:
    return list(_module().iter_requests(count, model, seed=seed))


def write_candidates(path: Path, count: int, model: str = "tiny-random", seed: int = 7) -> list[dict]:
    """Write `count` candidate lines to `path`; returns the requests."""
    requests = candidate_requests(count, model, seed)
    with path.open("wb") as fh:
        for request in requests:
            fh.write(orjson.dumps(request) + b"\n")
    return requests


def score_schema() -> dict:
    return _module().SCHEMA
