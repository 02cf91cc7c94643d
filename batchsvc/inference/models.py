"""The model catalogue: aliases clients submit with, mapped to what the engine loads.

Read from `configs/models.yaml` (path in settings). A `defaults` block is merged
under every model, so engine settings shared by all models are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from batchsvc.settings import PROJECT_ROOT, Settings, default_of


class EngineKind(StrEnum):
    VLLM = "vllm"  # the product engine
    INSTANT = "instant"  # the deterministic test engine (orchestration scale, fault injection), never a default


ENGINE_KINDS = tuple(kind.value for kind in EngineKind)


class ModelConfigError(ValueError):
    """A models.yaml entry that would not start: names the file, the model, the
    field and what is allowed. Raised when the API or a worker starts."""


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(allowed)}"

    return check


def _integer(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if ok and (high is None or value <= high):
            return None
        return f"an integer from {low}" + (f" to {high}" if high is not None else " up")

    return check


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
    return None if ok else "a number above 0 and at most 1"


def _number(value: Any) -> str | None:
    return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else "a mapping"


# What a models.yaml entry may set in engine_args (they go to vllm.LLM(...) as
# they are) and what each accepts. A field not listed here is refused, so a typo
# stops start-up instead of being ignored by the engine.
ENGINE_ARGS: dict[str, Callable[[Any], str | None]] = {
    "dtype": _choice("auto", "bfloat16", "float16", "float32"),
    "quantization": _choice("fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors"),
    "kv_cache_dtype": _choice("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "max_model_len": _integer(16),
    "max_num_seqs": _integer(1),
    "max_num_batched_tokens": _integer(16),
    "gpu_memory_utilization": _fraction,
    "enable_prefix_caching": _boolean,
    "tensor_parallel_size": _integer(1, 8),
    "enforce_eager": _boolean,
    "seed": _integer(0),
    "structured_outputs_config": _mapping,
}
# Request fields a model may give a default for (a request's own value wins).
DEFAULT_SAMPLING: dict[str, Callable[[Any], str | None]] = {
    "temperature": _number,
    "top_p": _fraction,
    "top_k": _integer(-1),
    "presence_penalty": _number,
    "frequency_penalty": _number,
    "repetition_penalty": _number,
    "seed": _integer(0),
}


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    model: str  # Hugging Face id or local directory
    engine: str = EngineKind.VLLM
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    engine_env: Mapping[str, str] = field(default_factory=dict)
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Sampling a request gets for the fields it does not set (see DEFAULT_SAMPLING).
    default_sampling: Mapping[str, Any] = field(default_factory=dict)
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


# The other fields of an entry and what each accepts.
_ENTRY_FIELDS: dict[str, Callable[[Any], str | None]] = {
    "model": lambda v: None if isinstance(v, str) and v else "a Hugging Face id or a local directory",
    "engine": _choice(*ENGINE_KINDS),
    "engine_args": _mapping,
    "engine_env": lambda v: (
        None
        if isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values())
        else ("a mapping of names to strings")
    ),
    "chat_template_kwargs": _mapping,
    "default_sampling": _mapping,
    "torch_threads": _integer(1),
    "max_tokens_cap": _integer(1),
    "default_max_tokens": _integer(1),
    "expected_req_per_sec": lambda v: None if _number(v) is None and v > 0 else "a number above 0",
    "request_max_attempts": _integer(1, 10),
    "gpu_hour_price": lambda v: None if v is None or (_number(v) is None and v >= 0) else "a number from 0 up",
}


def check_entry(alias: str, entry: Mapping[str, Any]) -> list[str]:
    """Every problem of one merged models.yaml entry, each naming the field."""
    problems = []

    def check(name: str, value: Any, rules: Mapping[str, Callable[[Any], str | None]]) -> None:
        rule = rules.get(name.rsplit(".", 1)[-1])
        if rule is None:
            problems.append(f"{name}: unknown field; allowed: {', '.join(rules)}")
        elif (wanted := rule(value)) is not None:
            problems.append(f"{name}: {value!r} is not allowed; must be {wanted}")

    if "model" not in entry:
        problems.append("model: missing; must be a Hugging Face id or a local directory")
    for name, value in entry.items():
        check(name, value, _ENTRY_FIELDS)
    for group, rules in (("engine_args", ENGINE_ARGS), ("default_sampling", DEFAULT_SAMPLING)):
        if isinstance(entry.get(group), Mapping):
            for name, value in entry[group].items():
                check(f"{group}.{name}", value, rules)
    cap = entry.get("max_tokens_cap", default_of(ModelSpec, "max_tokens_cap"))
    default = entry.get("default_max_tokens", default_of(ModelSpec, "default_max_tokens"))
    if isinstance(cap, int) and isinstance(default, int) and default > cap:
        problems.append(f"default_max_tokens: {default} is above max_tokens_cap ({cap})")
    return problems


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_models(path: Path) -> dict[str, ModelSpec]:
    """The catalogue of a models file, every entry checked (ModelConfigError)."""
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{path}: cannot read the models file: {exc}") from None
    defaults = data.get("defaults") or {}
    specs: dict[str, ModelSpec] = {}
    for alias, entry in (data.get("models") or {}).items():
        merged = _merge(defaults, entry or {})
        problems = check_entry(alias, merged)
        if problems:
            raise ModelConfigError(f"{path}: model {alias!r}: " + "; ".join(problems))
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


# --- adding a model: `batchsvc models add` ----------------------------------------

# For a hub name, whose config.json cannot be read here: settings that start on any
# GPU of 24 GB and up with a model of up to ~8B parameters. Tune them after a trial run.
CONSERVATIVE_ENGINE_ARGS: dict[str, Any] = {
    "dtype": "auto",
    "max_model_len": 4096,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 8192,
    "gpu_memory_utilization": 0.85,
    "enable_prefix_caching": True,
    "tensor_parallel_size": 1,
}


def alias_for(name_or_path: str) -> str:
    """'Qwen/Qwen3-4B' or '/models/Qwen3-4B/' -> 'qwen3-4b'."""
    return name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()


def _parameters(config: Mapping[str, Any]) -> int:
    """A decoder's parameter count from its config.json (embeddings, attention, MLP)."""
    hidden = int(config.get("hidden_size", 0))
    layers = int(config.get("num_hidden_layers", 0))
    mlp = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config.get("vocab_size", 0))
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * mlp)


def sized_engine_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """Engine settings sized from a local model's config.json."""
    config = config.get("text_config", config)  # multimodal configs nest the language model
    params = _parameters(config)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "auto")
    quant = (config.get("quantization_config") or {}).get("quant_method")
    args: dict[str, Any] = {
        "dtype": dtype if dtype in ("bfloat16", "float16", "float32") else "auto",
        # Scoring prompts are ~1,300 tokens; a longer limit only shrinks the batch.
        "max_model_len": min(int(config.get("max_position_embeddings", 4096)), 4096),
        "max_num_seqs": 256 if params <= 5e9 else 64,  # small models: many short sequences at once
        "max_num_batched_tokens": 16384 if params <= 5e9 else 8192,
        "gpu_memory_utilization": 0.90,
        "enable_prefix_caching": True,
        "tensor_parallel_size": 1 if params <= 15e9 else 2,  # ~30 GB of bf16 weights fit one 80 GB GPU
    }
    if quant == "fp8":
        args["quantization"] = "fp8"
    return args


def add_model(path: Path, name_or_path: str, alias: str | None = None) -> tuple[str, dict[str, Any], str]:
    """Append an entry for `name_or_path` to the models file at `path`; returns the
    alias, the entry and how its settings were chosen. Refuses an alias in use."""
    alias = alias or alias_for(name_or_path)
    existing = load_models(path)
    if alias in existing:
        raise ModelConfigError(f"{path}: model {alias!r} already exists; choose another --alias")
    local = Path(name_or_path).expanduser()
    config_file = local / "config.json"
    if config_file.is_file():
        import json

        args = sized_engine_args(json.loads(config_file.read_text()))
        entry: dict[str, Any] = {"model": str(local.absolute()), "engine_args": args}
        how = f"engine settings sized from {config_file}"
    else:
        entry = {"model": name_or_path, "engine_args": dict(CONSERVATIVE_ENGINE_ARGS)}
        how = "no local config.json to size it from: conservative engine settings; tune them after a trial run"
    if problems := check_entry(alias, entry):
        raise ModelConfigError(f"model {alias!r}: " + "; ".join(problems))
    block = yaml.safe_dump({alias: entry}, sort_keys=False, default_flow_style=None)
    original = path.read_text()
    text = original.rstrip("\n") + "\n" + f"  # added by `batchsvc models add {name_or_path}`\n"
    text += "".join(f"  {line}\n" for line in block.splitlines())
    path.write_text(text)
    try:
        if alias not in load_models(path):  # `models:` was not the file's last section
            raise ModelConfigError(f"{path}: could not append to its models section; add {alias!r} by hand")
    except ModelConfigError:
        path.write_text(original)
        raise
    return alias, entry, how
