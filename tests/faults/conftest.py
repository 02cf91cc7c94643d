"""The fault-injection suite (issue 4): real jobs on real workers, Redis and storage,
each with one fault injected, each judged by tests/support/invariants.py.

Every test gets its own redis-server, so a killed worker's unacknowledged messages,
or a restart, never touch the machine's shared Redis; its own queues and key
prefix; and the deterministic instant engine with small shards, so a job has many
shards and checkpoints. The numbers each fault cost (requests lost, duplicated,
recomputed; seconds to recover) are printed as a table at the end of the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.support.beat import Beat
from tests.support.invariants import INSTANT_MODEL, Outcome
from tests.support.moto_server import MotoServer
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, unique_names
from tests.support.webhook_receiver import WebhookReceiver

# Small shards and checkpoints, so a few hundred requests make many of both.
FAULT_DEFAULTS: dict[str, Any] = {
    "shard_size": 50,
    "progress_every": 10,
    "webhook_backoff_s": 0.25,
    "webhook_backoff_max_s": 2.0,
}


@dataclass(frozen=True)
class FaultRow:
    fault: str
    lost: int
    duplicated: int
    recomputed: int
    recover_s: float  # from the fault to the job done
    note: str
    resume_s: float | None = None  # from the fault to the shard running again


FAULT_ROWS = pytest.StashKey[list[FaultRow]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault injection: what each fault cost")
    terminalreporter.write_line(
        f"{'fault':<46} {'lost':>5} {'dup':>5} {'recomp':>6} {'resume_s':>8} {'done_s':>7}  note"
    )
    for row in rows:
        resume = f"{row.resume_s:>8.1f}" if row.resume_s is not None else f"{'-':>8}"
        terminalreporter.write_line(
            f"{row.fault:<46} {row.lost:>5} {row.duplicated:>5} {row.recomputed:>6} {resume} "
            f"{row.recover_s:>7.1f}  {row.note}"
        )


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """report(fault, outcome, recover_s, note, resume_s=None): a row of the end-of-session
    table; recover_s runs from the fault to the job done, resume_s to the shard running again."""
    rows = request.config.stash.setdefault(FAULT_ROWS, [])

    def record(fault: str, outcome: Outcome, recover_s: float, note: str = "", resume_s: float | None = None) -> None:
        lost, duplicated = len(outcome.lost), len(outcome.duplicated)
        rows.append(FaultRow(fault, lost, duplicated, outcome.recomputed, recover_s, note, resume_s))

    return record


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer.start() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer.start(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def instant_log(tmp_path: Path) -> Path:
    """Where the LLM workers' instant engine writes every custom_id it answers."""
    return tmp_path / "instant-answers.log"


@pytest.fixture
def make_stack(tmp_path: Path, redis_server: RedisServer, instant_log: Path) -> Iterator[Callable[..., Stack]]:
    """make_stack(delay_s=..., start=True, beat=False, **settings): a stack on this
    test's Redis, serving the instant engine, whose answers are logged to
    `instant_log`; with beat, Celery beat too (the lease checker, the sweeper)."""
    stacks: list[Stack] = []
    beats: list[Beat] = []

    def make(*, delay_s: float = 0.0, start: bool = True, beat: bool = False, **overrides: Any) -> Stack:
        settings = make_settings(
            tmp_path,
            **unique_names(),
            broker_url=redis_server.url(0),
            result_backend=redis_server.url(1),
            state_redis_url=redis_server.url(2),
            ratelimit_storage_url=redis_server.url(3),
            **{**FAULT_DEFAULTS, **overrides},
        )
        llm_env = {"BATCHSVC_INSTANT_LOG": str(instant_log), "BATCHSVC_INSTANT_DELAY_S": str(delay_s)}
        stack = Stack(settings, tmp_path, llm_models=[INSTANT_MODEL], llm_env=llm_env)
        stacks.append(stack)
        if beat:
            beats.append(Beat(stack.cpu.env, tmp_path).start())
        return stack.start() if start else stack

    yield make
    for beat in beats:
        beat.stop()
    for stack in stacks:
        stack.stop()
