"""The model catalogue: aliases clients submit with, mapped to what the engine loads.

Read from `configs/models.yaml` (path in settings). A `defaults` block is merged
under every model, so engine settings shared by all models are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from batchsvc.settings import PROJECT_ROOT, Settings


class EngineKind(StrEnum):
    VLLM = "vllm"  # the product engine
    INSTANT = "instant"  # the deterministic test engine (orchestration scale, fault injection), never a default


ENGINE_KINDS = tuple(kind.value for kind in EngineKind)


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    model: str  # Hugging Face id or local directory
    engine: str = EngineKind.VLLM
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    engine_env: Mapping[str, str] = field(default_factory=dict)
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # CPU engines in the worker's own process: torch's thread count, set before the
    # engine binds its threads (vLLM cannot change it after).
    torch_threads: int | None = None
    max_tokens_cap: int = 4096
    default_max_tokens: int = 512
    # Used for estimated_completion before a job of this model has published progress.
    expected_req_per_sec: float = 5.0
    # Runs of one request when vLLM finishes it with its retryable "error" reason.
    request_max_attempts: int = 3
    # What an hour of the GPU (the worker) running this model costs; a job's cost is its
    # engine-seconds at this price. None: no cost is reported.
    gpu_hour_price: float | None = None

    @property
    def names(self) -> set[str]:
        """Names a request's `body.model` may use for this model."""
        return {self.alias, self.model}


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_models(path: Path) -> dict[str, ModelSpec]:
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    defaults = data.get("defaults") or {}
    specs: dict[str, ModelSpec] = {}
    for alias, entry in (data.get("models") or {}).items():
        merged = _merge(defaults, entry or {})
        if "model" not in merged:
            raise ValueError(f"{path}: model {alias!r} has no 'model'")
        if merged.get("engine", EngineKind.VLLM) not in ENGINE_KINDS:
            raise ValueError(f"{path}: model {alias!r} has unknown engine {merged['engine']!r}")
        model = str(merged.pop("model"))
        # Local model directories are written relative to the project root.
        if model.startswith(("./", "var/")):
            model = str(PROJECT_ROOT / model)
        specs[alias] = ModelSpec(alias=alias, model=model, **merged)
    return specs


class ModelCatalog:
    def __init__(self, specs: Mapping[str, ModelSpec]):
        self._specs = dict(specs)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        return cls(load_models(settings.path(settings.models_file)))

    def get(self, alias: str) -> ModelSpec | None:
        return self._specs.get(alias)

    def aliases(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, alias: object) -> bool:
        return alias in self._specs
