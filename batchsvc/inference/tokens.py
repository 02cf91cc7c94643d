"""Prompt tokens as the engine counts them, without the engine: for dry runs,
on the cpu worker. Chat requests are rendered with the model's chat template
(and the request's template kwargs over the model's), then tokenized without
special tokens, as vLLM does; completions prompts are tokenized as given."""

from __future__ import annotations

from typing import Any

from batchsvc.inference.engine import instant_prompt_tokens
from batchsvc.inference.models import ModelSpec
from batchsvc.inference.outputs import CHAT_URL
from batchsvc.inference.sampling import engine_options

_tokenizers: dict[str, Any] = {}


def _tokenizer(spec: ModelSpec) -> Any:
    source = str(spec.engine_args.get("tokenizer") or spec.model)
    if source not in _tokenizers:
        from transformers import AutoTokenizer  # heavy import: only where a dry run counts

        _tokenizers[source] = AutoTokenizer.from_pretrained(source, revision=spec.engine_args.get("revision"))
    return _tokenizers[source]


def prompt_tokens(spec: ModelSpec, url: str, body: dict[str, Any]) -> int:
    if spec.engine == "instant":
        return instant_prompt_tokens(body)
    tokenizer = _tokenizer(spec)
    if url == CHAT_URL:
        kwargs = engine_options(body, spec).chat_template_kwargs
        text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True, **kwargs)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return len(tokenizer(body["prompt"])["input_ids"])
