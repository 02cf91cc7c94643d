"""The vLLM adapter's run loop, against a stand-in for vLLM's offline engine: id
mapping, per-request refusals, retries of vLLM's retryable "error" finishes, and
abort when the consumer stops early. (Real vLLM runs in tests/integration.)"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.exceptions import VLLMValidationError

from batchsvc.inference.engine import EngineRequest, VLLMEngine
from batchsvc.inference.models import ModelSpec


class StandInCore:
    """Finishes one queued request per step with the next finish reason its
    script names for that prompt ("stop" once the script runs out)."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.queue: list[tuple[str, str]] = []
        self.aborted: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def step(self) -> list[Any]:
        external, prompt = self.queue.pop(0)
        reasons = self.script.get(prompt) or ["stop"]
        reason = reasons.pop(0) if len(reasons) > 1 else reasons[0]
        completion = SimpleNamespace(
            index=0, text=f"answer to {prompt}", finish_reason=reason, token_ids=[7, 8], logprobs=None
        )
        return [SimpleNamespace(request_id=external, finished=True, outputs=[completion], prompt_token_ids=[1, 2, 3])]

    def abort_request(self, ids: list[str], internal: bool = False) -> None:
        self.aborted += ids
        self.queue.clear()


class StandInLLM:
    def __init__(self, core: StandInCore):
        self.llm_engine = core
        self._counter = itertools.count()

    def enqueue_chat(self, messages: list, params: list, use_tqdm: bool, chat_template_kwargs: Any) -> list[str]:
        prompt = messages[0][-1]["content"]
        if prompt == "too long":
            raise VLLMValidationError("This model's maximum context length is 2048 tokens. However, ...")
        n = next(self._counter)
        self.llm_engine.queue.append((str(n), prompt))
        return [f"{n}-{n:08x}"]  # internal ids carry a suffix the outputs do not


def engine(script: dict[str, list[str]], attempts: int = 3) -> tuple[VLLMEngine, StandInCore]:
    core = StandInCore(script)
    adapter = object.__new__(VLLMEngine)  # no model load: the loop is what is under test
    adapter.spec = ModelSpec(alias="m", model="m", request_max_attempts=attempts)
    adapter.llm = StandInLLM(core)
    return adapter, core


def chat(prompt: str) -> EngineRequest:
    return EngineRequest(prompt, "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]})


def test_every_request_comes_back_once_matched_by_id() -> None:
    adapter, _ = engine({})
    results = list(adapter.run([chat("a"), chat("b"), chat("c")]))
    assert sorted(r.custom_id for r in results) == ["a", "b", "c"]
    assert all(r.choices and r.choices[0].text == f"answer to {r.custom_id}" for r in results)
    assert all(r.attempts == 1 and r.prompt_tokens == 3 for r in results)


def test_a_refused_request_fails_alone() -> None:
    adapter, _ = engine({})
    results = {r.custom_id: r for r in adapter.run([chat("a"), chat("too long"), chat("c")])}
    assert results["too long"].failure is not None
    assert results["too long"].failure.code == "context_length_exceeded"
    assert results["a"].failure is None and results["c"].failure is None


def test_a_retryable_engine_error_runs_again_and_counts_attempts() -> None:
    adapter, _ = engine({"flaky": ["error", "stop"]})
    (result,) = adapter.run([chat("flaky")])
    assert result.failure is None
    assert result.attempts == 2


def test_retries_are_bounded_and_end_in_a_500_error_line() -> None:
    adapter, _ = engine({"broken": ["error"]}, attempts=3)
    (result,) = adapter.run([chat("broken")])
    assert result.failure is not None
    assert (result.failure.code, result.failure.status_code) == ("engine_error", 500)
    assert result.attempts == 3


def test_stopping_early_aborts_what_the_engine_still_holds() -> None:
    adapter, core = engine({})
    results = adapter.run([chat("a"), chat("b"), chat("c")])
    next(results)
    results.close()
    assert len(core.aborted) == 2
    assert all("-" in internal for internal in core.aborted)  # abort takes the internal ids


@pytest.mark.parametrize("attempts", [1, 2])
def test_the_attempt_count_is_recorded_in_the_output_line_only_when_it_ran_again(attempts: int) -> None:
    from batchsvc.inference import outputs

    line = outputs.success_line("batch_x", "a", {"object": "chat.completion"}, attempts)
    assert line.get("attempts") == (attempts if attempts > 1 else None)
