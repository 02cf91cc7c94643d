"""Request body -> engine options. Pure data, so it is tested without loading vLLM.

The vLLM adapter turns `EngineOptions.sampling` into `SamplingParams(**sampling)`
and `EngineOptions.structured` into `StructuredOutputsParams(**structured)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchsvc.inference.models import ModelSpec

# OpenAI body field -> SamplingParams keyword, copied through unchanged.
_PASS_THROUGH = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "n": "n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


@dataclass(frozen=True)
class EngineOptions:
    sampling: dict[str, Any]
    structured: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


def max_tokens_for(body: dict[str, Any], spec: ModelSpec) -> int:
    # max_completion_tokens is the newer OpenAI name; it wins when both are given.
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if asked is None:
        asked = spec.default_max_tokens
    return max(1, min(int(asked), spec.max_tokens_cap))


def structured_for(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        return {"json": response_format["json_schema"]["schema"]}
    if kind == "json_object":
        return {"json_object": True}
    return None


def engine_options(body: dict[str, Any], spec: ModelSpec) -> EngineOptions:
    # The model's default sampling (e.g. temperature 0 for scoring), then what the request sets.
    sampling: dict[str, Any] = {**spec.default_sampling, "max_tokens": max_tokens_for(body, spec)}
    for source, target in _PASS_THROUGH.items():
        if body.get(source) is not None:
            sampling[target] = body[source]
    logprobs = body.get("logprobs")
    # Chat says `logprobs: true, top_logprobs: k`; legacy completions say `logprobs: k`.
    # vLLM wants k alternatives per token (0 means the sampled token's own only).
    if logprobs is True:
        sampling["logprobs"] = int(body.get("top_logprobs") or 0)
    elif isinstance(logprobs, int) and not isinstance(logprobs, bool):
        sampling["logprobs"] = logprobs
    stop = body.get("stop")
    if stop is not None:
        sampling["stop"] = [stop] if isinstance(stop, str) else list(stop)
    # Per-model defaults first (e.g. Qwen3 thinking off), then what the request asks for.
    template_kwargs = {**spec.chat_template_kwargs, **(body.get("chat_template_kwargs") or {})}
    return EngineOptions(
        sampling=sampling,
        structured=structured_for(body.get("response_format")),
        chat_template_kwargs=template_kwargs,
    )
