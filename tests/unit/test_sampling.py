"""The request body -> engine options mapping (batchsvc.inference.sampling), and that vLLM accepts what it produces."""

from __future__ import annotations

from typing import Any

import pytest

from batchsvc.inference.models import ModelSpec, load_models
from batchsvc.inference.sampling import engine_options
from batchsvc.inference.validation import validate_body
from tests.conftest import TEST_MODELS_FILE

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "recommendation": {"type": "string"}},
    "required": ["score", "recommendation"],
}


def spec(**overrides: Any) -> ModelSpec:
    values: dict[str, Any] = {"alias": "m", "model": "org/m", "max_tokens_cap": 100, "default_max_tokens": 16}
    values.update(overrides)
    return ModelSpec(**values)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], **fields}


# --- max_tokens ------------------------------------------------------------------


def test_max_tokens_is_passed_as_asked() -> None:
    assert engine_options(chat_body(max_tokens=40), spec()).sampling["max_tokens"] == 40


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    opts = engine_options(chat_body(max_tokens=40, max_completion_tokens=25), spec())
    assert opts.sampling["max_tokens"] == 25


def test_max_completion_tokens_alone_is_used() -> None:
    assert engine_options(chat_body(max_completion_tokens=7), spec()).sampling["max_tokens"] == 7


def test_max_tokens_defaults_to_the_models_default() -> None:
    assert engine_options(chat_body(), spec(default_max_tokens=33)).sampling["max_tokens"] == 33


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_capped_by_the_model(field: str) -> None:
    opts = engine_options(chat_body(**{field: 5000}), spec(max_tokens_cap=100))
    assert opts.sampling["max_tokens"] == 100


def test_default_max_tokens_above_the_cap_is_capped() -> None:
    opts = engine_options(chat_body(), spec(max_tokens_cap=10, default_max_tokens=64))
    assert opts.sampling["max_tokens"] == 10


def test_only_max_tokens_is_set_when_the_body_has_no_sampling_fields() -> None:
    opts = engine_options(chat_body(), spec())
    assert opts.sampling == {"max_tokens": 16}
    assert opts.structured is None
    assert opts.chat_template_kwargs == {}


# --- pass-through ----------------------------------------------------------------


def test_sampling_fields_pass_through_unchanged() -> None:
    body = chat_body(temperature=0.3, top_p=0.9, seed=1234, n=3, presence_penalty=-0.5, frequency_penalty=1.5)
    assert engine_options(body, spec()).sampling == {
        "max_tokens": 16,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 1234,
        "n": 3,
        "presence_penalty": -0.5,
        "frequency_penalty": 1.5,
    }


def test_zero_values_are_passed_not_dropped() -> None:
    # temperature 0 (greedy) and seed 0 are meaningful; a truthiness check would lose them.
    opts = engine_options(chat_body(temperature=0, seed=0, presence_penalty=0), spec())
    assert opts.sampling["temperature"] == 0
    assert opts.sampling["seed"] == 0
    assert opts.sampling["presence_penalty"] == 0


def test_fields_that_are_not_sampling_fields_are_not_passed() -> None:
    opts = engine_options(chat_body(user="u-1", model="m", stream=False), spec())
    assert set(opts.sampling) == {"max_tokens"}


def test_logprobs_requested_in_the_body_reach_the_engine() -> None:
    opts = engine_options(chat_body(logprobs=True, top_logprobs=2), spec())
    assert opts.sampling.get("logprobs") == 2


# --- stop ------------------------------------------------------------------------


def test_a_stop_string_becomes_a_list() -> None:
    assert engine_options(chat_body(stop="\n\n"), spec()).sampling["stop"] == ["\n\n"]


def test_a_stop_list_stays_a_list_in_order() -> None:
    assert engine_options(chat_body(stop=["END", "###"]), spec()).sampling["stop"] == ["END", "###"]


# --- response_format -------------------------------------------------------------


def test_json_schema_response_format_becomes_structured_json() -> None:
    body = chat_body(response_format={"type": "json_schema", "json_schema": {"name": "score", "schema": SCHEMA}})
    assert engine_options(body, spec()).structured == {"json": SCHEMA}


def test_json_object_response_format_becomes_structured_json_object() -> None:
    opts = engine_options(chat_body(response_format={"type": "json_object"}), spec())
    assert opts.structured == {"json_object": True}


def test_text_response_format_is_unstructured() -> None:
    assert engine_options(chat_body(response_format={"type": "text"}), spec()).structured is None


def test_response_format_does_not_leak_into_sampling() -> None:
    opts = engine_options(chat_body(response_format={"type": "json_object"}), spec())
    assert "response_format" not in opts.sampling


# --- chat_template_kwargs --------------------------------------------------------


def test_per_model_chat_template_default_applies() -> None:
    opts = engine_options(chat_body(), spec(chat_template_kwargs={"enable_thinking": False}))
    assert opts.chat_template_kwargs == {"enable_thinking": False}


def test_request_chat_template_kwargs_override_the_model_default() -> None:
    body = chat_body(chat_template_kwargs={"enable_thinking": True, "custom": "x"})
    opts = engine_options(body, spec(chat_template_kwargs={"enable_thinking": False, "keep": 1}))
    assert opts.chat_template_kwargs == {"enable_thinking": True, "custom": "x", "keep": 1}


def test_merging_chat_template_kwargs_leaves_the_model_spec_alone() -> None:
    model = spec(chat_template_kwargs={"enable_thinking": False})
    engine_options(chat_body(chat_template_kwargs={"enable_thinking": True}), model)
    assert model.chat_template_kwargs == {"enable_thinking": False}


def test_the_test_catalogues_tiny_model_turns_thinking_off() -> None:
    tiny = load_models(TEST_MODELS_FILE)["tiny-random"]
    opts = engine_options(chat_body(max_tokens=5000), tiny)
    assert opts.chat_template_kwargs == {"enable_thinking": False}
    assert opts.sampling["max_tokens"] == 1024  # the catalogue's defaults block sets max_tokens_cap


# --- the real vLLM objects -------------------------------------------------------


def test_vllm_builds_sampling_and_structured_params_from_the_mapping() -> None:
    from vllm import sampling_params  # ~5 s; imported here so the other tests stay instant

    body = chat_body(
        max_completion_tokens=50,
        temperature=0.7,
        top_p=0.95,
        seed=42,
        n=2,
        stop="END",
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        response_format={"type": "json_schema", "json_schema": {"name": "score", "schema": SCHEMA}},
    )
    opts = engine_options(body, spec())
    assert opts.structured is not None

    params = sampling_params.SamplingParams(**opts.sampling)
    params.structured_outputs = sampling_params.StructuredOutputsParams(**opts.structured)

    assert (params.max_tokens, params.n, params.seed) == (50, 2, 42)
    assert params.temperature == pytest.approx(0.7)
    assert params.top_p == pytest.approx(0.95)
    assert params.stop == ["END"]
    assert params.presence_penalty == pytest.approx(0.5)
    assert params.frequency_penalty == pytest.approx(-0.25)
    assert params.structured_outputs.json == SCHEMA
    json_object = sampling_params.StructuredOutputsParams(
        **engine_options(chat_body(response_format={"type": "json_object"}), spec()).structured
    )
    assert json_object.json_object is True


def test_validation_refuses_what_vllm_would_refuse_at_run_time() -> None:
    from vllm.sampling_params import SamplingParams

    greedy_pair = chat_body(n=2, temperature=0)
    assert [p for p, _ in validate_body("/v1/chat/completions", greedy_pair, model_names={"m"})] == ["body.n"]
    with pytest.raises(Exception, match="greedy"):
        SamplingParams(**engine_options(greedy_pair, spec()).sampling)

    sampled_pair = chat_body(n=2, temperature=0.7)
    assert validate_body("/v1/chat/completions", sampled_pair, model_names={"m"}) == []
    assert SamplingParams(**engine_options(sampled_pair, spec()).sampling).n == 2
