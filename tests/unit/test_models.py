"""The model catalogue: every engine setting of configs/models.yaml is checked,
and a bad entry is refused naming the model, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from batchsvc.inference.models import ENGINE_ARGS, ModelConfigError, ModelSpec, load_models
from batchsvc.inference.sampling import engine_options
from batchsvc.settings import PROJECT_ROOT
from tests.conftest import make_settings
from web import create_app

SCORING_SETTINGS = {
    "dtype",
    "kv_cache_dtype",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "enable_prefix_caching",
    "tensor_parallel_size",
}


def write_models(tmp_path: Path, models: dict[str, Any], defaults: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "models": models}))
    return path


def test_the_shipped_catalogue_loads_and_its_gpu_models_carry_the_scoring_settings() -> None:
    specs = load_models(PROJECT_ROOT / "configs" / "models.yaml")
    gpu = [s for s in specs.values() if not s.model.startswith(str(PROJECT_ROOT))]
    assert {s.alias for s in gpu} >= {"qwen3-4b", "qwen3-4b-fp8", "llama-3.2-3b-fp8", "gemma-3-4b"}
    for spec in gpu:
        assert set(spec.engine_args) >= SCORING_SETTINGS, spec.alias
        assert spec.default_sampling == {"temperature": 0}
    assert specs["qwen3-4b-fp8"].engine_args["quantization"] == "fp8"
    assert specs["qwen3-4b-fp8"].engine_args["kv_cache_dtype"] == "fp8"
    assert "quantization" not in specs["qwen3-4b"].engine_args
    assert specs["qwen3-4b-fp8"].chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("entry", "field", "allowed"),
    [
        ({"engine_args": {"dtype": "fp16"}}, "engine_args.dtype", "auto, bfloat16, float16, float32"),
        ({"engine_args": {"quantization": "int3"}}, "engine_args.quantization", "fp8"),
        ({"engine_args": {"kv_cache_dtype": "int8"}}, "engine_args.kv_cache_dtype", "fp8_e4m3"),
        ({"engine_args": {"gpu_memory_utilization": 1.5}}, "engine_args.gpu_memory_utilization", "at most 1"),
        ({"engine_args": {"max_model_len": "4k"}}, "engine_args.max_model_len", "an integer"),
        ({"engine_args": {"max_num_seqs": 0}}, "engine_args.max_num_seqs", "an integer from 1"),
        ({"engine_args": {"tensor_parallel_size": 16}}, "engine_args.tensor_parallel_size", "1 to 8"),
        ({"engine_args": {"enable_prefix_caching": "yes"}}, "engine_args.enable_prefix_caching", "true or false"),
        ({"engine_args": {"max_num_batch_tokens": 8192}}, "engine_args.max_num_batch_tokens", "max_num_batched_tokens"),
        ({"default_sampling": {"temprature": 0}}, "default_sampling.temprature", "temperature"),
        ({"default_sampling": {"top_p": 2}}, "default_sampling.top_p", "at most 1"),
        ({"chat_template_kwargs": "enable_thinking=false"}, "chat_template_kwargs", "a mapping"),
        ({"max_tokens_cap": 64, "default_max_tokens": 128}, "default_max_tokens", "max_tokens_cap"),
        ({"engine": "tgi"}, "engine", "vllm, instant"),
        ({"gpu": 1}, "gpu", "engine_args"),
        ({"model": None}, "model", "Hugging Face id"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_model_the_field_and_what_is_allowed(
    tmp_path: Path, entry: dict[str, Any], field: str, allowed: str
) -> None:
    path = write_models(tmp_path, {"good": {"model": "org/good"}, "bad-one": {"model": "org/m", **entry}})
    with pytest.raises(ModelConfigError) as caught:
        load_models(path)
    message = str(caught.value)
    assert "model 'bad-one'" in message and f"{field}:" in message and allowed in message, message
    assert str(path) in message


def test_a_bad_default_is_refused_for_the_first_model_that_inherits_it(tmp_path: Path) -> None:
    path = write_models(tmp_path, {"a": {"model": "org/a"}}, defaults={"engine_args": {"dtype": "fp4"}})
    with pytest.raises(ModelConfigError, match=r"model 'a': engine_args\.dtype: 'fp4'"):
        load_models(path)


def test_a_missing_model_and_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"model 'x': model: missing"):
        load_models(write_models(tmp_path, {"x": {"engine_args": {}}}))
    (tmp_path / "broken.yaml").write_text("models: [\n")
    with pytest.raises(ModelConfigError, match="cannot read the models file"):
        load_models(tmp_path / "broken.yaml")


def test_every_engine_setting_the_issue_names_is_checked() -> None:
    assert SCORING_SETTINGS | {"quantization"} <= set(ENGINE_ARGS)


def test_default_sampling_applies_where_the_request_is_silent() -> None:
    spec = ModelSpec(alias="m", model="org/m", default_sampling={"temperature": 0, "top_p": 0.9})
    silent = engine_options({"messages": []}, spec)
    assert silent.sampling["temperature"] == 0 and silent.sampling["top_p"] == 0.9
    asked = engine_options({"messages": [], "temperature": 0.7}, spec)
    assert asked.sampling["temperature"] == 0.7 and asked.sampling["top_p"] == 0.9


def test_the_api_does_not_start_with_a_bad_models_file(tmp_path: Path) -> None:
    path = write_models(tmp_path, {"qwen": {"model": "Qwen/Qwen3-4B", "engine_args": {"dtype": "fp16"}}})
    with pytest.raises(ModelConfigError, match=r"model 'qwen': engine_args\.dtype"):
        create_app(make_settings(tmp_path, models_file=str(path)))
