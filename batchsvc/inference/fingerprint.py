"""Request fingerprints: what makes two requests give the same answer.

A fingerprint is `fp1:` and the sha256 hex of the canonical JSON (sorted keys,
no whitespace, orjson) of this object:

    {"v": 1,
     "model": the model alias,
     "weights": the weights identity (batchsvc/inference/provenance.py: the digest
                of a local model directory, or a hub id and its pinned revision),
     "engine": {"kind": "vllm" | "instant",
                "args": the model's engine_args minus PERFORMANCE_ONLY_ARGS},
     "url": "/v1/chat/completions" or "/v1/completions",
     "input": body.messages (chat) or body.prompt (completions), as sent,
     "sampling": the SamplingParams the engine is given (batchsvc/inference/sampling.py:
                 max_tokens after the model default and cap, temperature, top_p,
                 seed, n, penalties, logprobs, stop; only those the request sets),
     "response_format": body.response_format, or null,
     "chat_template_kwargs": the model's defaults merged with the request's}

Not in it: `custom_id`, `body.model` (the alias stands for it), body fields the
engine does not read, and the engine version (it is in the job's reproducibility
record; after an upgrade, submit with `force: true` to recompute)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from batchsvc.inference.models import ModelSpec
from batchsvc.inference.outputs import CHAT_URL
from batchsvc.inference.sampling import engine_options

VERSION = 1
PREFIX = f"fp{VERSION}:"

# Engine args that change speed or memory, never what a request is answered with.
PERFORMANCE_ONLY_ARGS = frozenset(
    {
        "gpu_memory_utilization",
        "enforce_eager",
        "enable_prefix_caching",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "swap_space",
        "cpu_offload_gb",
        "block_size",
        "disable_log_stats",
    }
)


def engine_identity(spec: ModelSpec) -> dict[str, Any]:
    return {
        "kind": spec.engine,
        "args": {k: v for k, v in spec.engine_args.items() if k not in PERFORMANCE_ONLY_ARGS},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def request_fingerprint(spec: ModelSpec, weights: str, url: str, body: dict[str, Any]) -> str:
    options = engine_options(body, spec)
    document = {
        "v": VERSION,
        "model": spec.alias,
        "weights": weights,
        "engine": _plain(engine_identity(spec)),
        "url": url,
        "input": body.get("messages") if url == CHAT_URL else body.get("prompt"),
        "sampling": options.sampling,
        "response_format": body.get("response_format"),
        "chat_template_kwargs": options.chat_template_kwargs,
    }
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return PREFIX + hashlib.sha256(canonical).hexdigest()
