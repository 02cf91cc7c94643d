"""Priority that overtakes: one LLM worker busy on a low job of many shards; a
high job submitted after it started runs its shards before the low job's
remaining ones and finishes first, and no running shard is interrupted.

The instant engine answers each request after BATCHSVC_INSTANT_DELAY_S and logs
each custom_id it answers, in order: that log is the order in which the worker
ran the shards. The engine makes no difference to scheduling, and a fixed delay
makes the low job last long enough (12 shards of 0.5 s) on a busy machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import make_settings
from tests.support.client import upload
from tests.support.stack import Stack, unique_names, wait_until

pytestmark = pytest.mark.integration

SHARD_SIZE = 5
DELAY_S = 0.1


def jsonl(prefix: str, count: int) -> bytes:
    body = {"messages": [{"role": "user", "content": "rate this candidate"}], "max_tokens": 8}
    lines = [
        {"custom_id": f"{prefix}-{i:03d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i in range(count)
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    settings = make_settings(tmp_path, shard_size=SHARD_SIZE, **unique_names())
    env = {"BATCHSVC_INSTANT_DELAY_S": str(DELAY_S), "BATCHSVC_INSTANT_LOG": str(tmp_path / "answered.log")}
    stack = Stack(settings, tmp_path, llm_models=["instant-test"], llm_env=env)
    try:
        yield stack.start()
    finally:
        stack.stop()


def answered(tmp_path: Path) -> list[str]:
    path = tmp_path / "answered.log"
    return path.read_text().split() if path.exists() else []


def shard_start_order(custom_ids: list[str]) -> list[str]:
    """ "low/3" for the shard holding low-015..low-019, in the order each shard's first request ran."""
    order: list[str] = []
    for custom_id in custom_ids:
        prefix, number = custom_id.split("-")
        shard = f"{prefix}/{int(number) // SHARD_SIZE}"
        if shard not in order:
            order.append(shard)
    return order


def test_a_high_job_submitted_later_overtakes_the_low_jobs_remaining_shards(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    low = upload(stack.client, jsonl("low", 12 * SHARD_SIZE), "instant-test", metadata={"priority": "low"})
    assert low.status_code == 202, low.get_json()
    low_id = low.get_json()["job_id"]
    wait_until(lambda: answered(tmp_path), 120, interval=0.05, what="the low job to start")

    high = upload(stack.client, jsonl("high", 2 * SHARD_SIZE), "instant-test", metadata={"priority": "high"})
    assert high.status_code == 202, high.get_json()
    high_id = high.get_json()["job_id"]

    high_job, low_job = stack.wait_for_job(high_id, timeout=300), stack.wait_for_job(low_id, timeout=300)
    ran = answered(tmp_path)
    order = shard_start_order(ran)
    with capsys.disabled():
        print(f"\nshard start order: {' '.join(order)}")

    assert high_job["status"] == low_job["status"] == "completed"
    assert high_job["metadata"]["priority"] == "high" and low_job["metadata"]["priority"] == "low"
    assert high_job["finished_at"] <= low_job["finished_at"]
    assert sorted(ran) == sorted([f"low-{i:03d}" for i in range(60)] + [f"high-{i:03d}" for i in range(10)])
    first_high = order.index("high/0")
    # The high job's two shards ran back to back, ahead of the low shards still queued...
    assert order[first_high : first_high + 2] == ["high/0", "high/1"]
    assert len(order) - (first_high + 2) >= 5, order  # ...while most of the low job still waited
    assert first_high >= 1
    # ...and the low shard that was running went on to its end first: each shard ran its
    # requests in one unbroken run.
    runs = [f"{c.split('-')[0]}/{int(c.split('-')[1]) // SHARD_SIZE}" for c in ran]
    assert [shard for i, shard in enumerate(runs) if i == 0 or runs[i - 1] != shard] == order
