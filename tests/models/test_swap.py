"""Routing and hot-swap on real workers and the real vLLM engine, with two tiny
models that differ (tiny-random: vocabulary 2,403; tiny-random-2k: 2,050).

The prompt below tokenizes to 13 tokens in one and 16 in the other, so the
`usage.prompt_tokens` of a result line tells which engine answered it, and each
worker's record (batchsvc/store/workers.py) lists the shards it ran."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import redis

from batchsvc.store.keys import Role
from tasks.names import llm_queue, queue_keys
from tests.conftest import make_settings
from tests.support.client import grant, keyed_client, upload
from tests.support.invariants import assert_each_request_once, lines_of
from tests.support.stack import Stack, Worker, unique_names, wait_until

pytestmark = pytest.mark.integration

A, B = "tiny-random", "tiny-random-2k"
SHARD_SIZE = 25


def jsonl(prefix: str, model: str, count: int) -> tuple[bytes, list[dict[str, Any]]]:
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": "Oliver Becker worked in government in Chicago and showed fundamentals and decisions.",
            }
        ],
    }
    lines = [
        {
            "custom_id": f"{prefix}-{i:04d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**body, "max_tokens": 4},
        }
        for i in range(count)
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines), lines


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("swap")
    settings = make_settings(tmp, shard_size=SHARD_SIZE, **unique_names())
    stack = Stack(settings, tmp, llm_models=[A])
    second = Worker(
        "llm2",
        [f"{settings.llm_queue_prefix}.{B}"],
        {**stack.llm.env, "BATCHSVC_PRELOAD_MODEL": B},
        tmp,
        [],
        host=stack.llm.host,
    )
    stack.extra_workers.append(second)
    try:
        second.start()
        stack.start()
        second.wait_ready()
        # Ready means consuming; the records say when each engine is warm.
        wait_until(
            lambda: all(w.state == "idle" for w in records(stack).values()) and len(records(stack)) == 2,
            300,
            what="both engines loaded",
        )
        yield stack
    finally:
        stack.stop()


def records(stack: Stack) -> dict[str, Any]:
    return {w.name: w for w in stack.services.workers.live()}


def submit(stack: Stack, prefix: str, model: str, count: int) -> tuple[str, list[dict[str, Any]]]:
    data, lines = jsonl(prefix, model, count)
    response = upload(stack.client, data, model)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"], lines


def results(stack: Stack, job_id: str) -> tuple[list[dict], list[dict]]:
    job = stack.services.jobs.get(job_id)
    errors = lines_of(stack.storage.get_bytes(job.errors_key)) if job.errors_key else []
    return lines_of(stack.storage.get_bytes(job.results_key)), errors


def prompt_tokens(lines: list[dict]) -> set[int]:
    return {line["response"]["body"]["usage"]["prompt_tokens"] for line in lines}


def job_of(shard: str) -> str:
    return shard.split("/")[0]


def test_jobs_for_two_models_run_side_by_side_each_on_its_models_worker(stack: Stack) -> None:
    job_a, lines_a = submit(stack, "route-a", A, 3 * SHARD_SIZE)
    job_b, lines_b = submit(stack, "route-b", B, 3 * SHARD_SIZE)
    for job_id in (job_a, job_b):
        assert stack.wait_for_job(job_id, timeout=300)["status"] == "completed"

    out_a, err_a = results(stack, job_a)
    out_b, err_b = results(stack, job_b)
    assert_each_request_once(lines_a, out_a, err_a)
    assert_each_request_once(lines_b, out_b, err_b)
    assert {line["response"]["body"]["model"] for line in out_a} == {A}
    assert {line["response"]["body"]["model"] for line in out_b} == {B}
    # One tokenizer per job, and not the same one.
    assert len(prompt_tokens(out_a)) == len(prompt_tokens(out_b)) == 1
    assert prompt_tokens(out_a) != prompt_tokens(out_b)
    ran = {name: stack.services.workers.shards_of(name) for name in records(stack)}
    assert {(job_of(s), m) for s, m, _ in ran[stack.llm.nodename] if job_of(s) in (job_a, job_b)} == {(job_a, A)}
    assert {(job_of(s), m) for s, m, _ in ran[f"llm2@{stack.llm.host}"] if job_of(s) in (job_a, job_b)} == {(job_b, B)}


def test_the_openai_client_lists_the_catalogue_and_the_live_workers(stack: Stack) -> None:
    with openai.OpenAI(base_url=f"{stack.serve_http()}/v1", api_key=stack.api_key) as client:
        models = {m.id: m for m in client.models.list()}
    assert sorted(models) == stack.services.models.aliases()
    assert all(m.object == "model" and m.owned_by == "batchsvc" for m in models.values())
    # Fields beyond OpenAI's stay readable on the client's objects.
    assert models[A].model_extra["live_workers"] == [stack.llm.nodename]
    assert models[B].model_extra["live_workers"] == [f"llm2@{stack.llm.host}"]
    assert models["instant-test"].model_extra["live_workers"] == []


def queued(stack: Stack, model: str) -> int:
    broker = redis.Redis.from_url(stack.settings.broker_url)
    try:
        return sum(int(broker.llen(key)) for key in queue_keys(llm_queue(stack.settings, model)))
    finally:
        broker.close()


def swapped(stack: Stack, name: str, model: str, since: float) -> Any:
    """The worker's record once its latest swap, to `model`, finished after `since`."""
    w = records(stack).get(name)
    return w if w and w.last_swap and w.last_swap["to"] == model and w.last_swap["done_at"] > since else None


def test_a_worker_swaps_models_while_shards_of_both_are_queued_and_nothing_is_lost(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = keyed_client(stack.app, grant(stack.app, role=Role.ADMIN))
    first, second = stack.llm.nodename, f"llm2@{stack.llm.host}"
    loads = {w.model: w.engine_load_s for w in records(stack).values()}
    job_a, lines_a = submit(stack, "swap-a", A, 40 * SHARD_SIZE)
    job_b, lines_b = submit(stack, "swap-b", B, 40 * SHARD_SIZE)
    wait_until(lambda: all(w.state == "busy" for w in records(stack).values()), 120, interval=0.02, what="both busy")

    # The only worker of A moves to B: it ends its shard, and A's other shards wait.
    asked = time.time()
    response = admin.post(f"/v1/admin/workers/{first}/model", json={"model": B})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["swap_to"] == B
    to_b = wait_until(lambda: swapped(stack, first, B, asked), 300, what=f"{first} swapped to {B}")
    assert to_b.model == B and to_b.queues == [llm_queue(stack.settings, B)] and to_b.swap_to is None
    assert stack.services.jobs.get(job_a).status.value == "in_progress"
    assert queued(stack, A) > 0  # shards of A wait, with no worker for them

    # Now the other worker moves from B to A and runs what A left.
    asked_back = time.time()
    assert admin.post(f"/v1/admin/workers/{second}/model", json={"model": A}).status_code == 202
    to_a = wait_until(lambda: swapped(stack, second, A, asked_back), 300, what=f"{second} swapped to {A}")
    assert to_a.queues == [llm_queue(stack.settings, A)]

    for job_id in (job_a, job_b):
        assert stack.wait_for_job(job_id, timeout=600)["status"] == "completed"
    out_a, err_a = results(stack, job_a)
    out_b, err_b = results(stack, job_b)
    assert err_a == err_b == []
    assert_each_request_once(lines_a, out_a, err_a)
    assert_each_request_once(lines_b, out_b, err_b)
    # Every line was answered by its own model's engine, before and after the swaps.
    assert len(prompt_tokens(out_a)) == len(prompt_tokens(out_b)) == 1
    assert prompt_tokens(out_a) != prompt_tokens(out_b)

    def ran(name: str, after: float, before: float = float("inf")) -> list[tuple[str, str]]:
        return [(job_of(s), m) for s, m, t in stack.services.workers.shards_of(name) if after < t < before]

    assert (job_a, A) in ran(first, asked - 120, to_b.last_swap["done_at"])
    assert set(ran(first, to_b.last_swap["done_at"])) <= {(job_b, B)}
    assert (job_b, B) in ran(second, asked - 120, to_a.last_swap["done_at"])
    after_swap = ran(second, to_a.last_swap["done_at"])
    assert after_swap and set(after_swap) == {(job_a, A)}
    first_result = min(t for s, m, t in stack.services.workers.shards_of(second) if t > to_a.last_swap["done_at"])

    with capsys.disabled():
        print(f"\nengine load at worker start: {loads}")
        for name, w in ((first, to_b), (second, to_a)):
            s = w.last_swap
            print(
                f"swap {name} {s['from']} -> {s['to']}: its running shard ended after {s['waited_s']:.2f}s, "
                f"unload {s['unload_s']:.2f}s, load {s['load_s']:.2f}s"
            )
        print(
            f"swap {second}: request to its first shard of {A} done (stop, unload, load, first result): "
            f"{first_result - asked_back:.2f}s"
        )
