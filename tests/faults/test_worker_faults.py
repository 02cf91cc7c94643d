"""Faults of the LLM workers: killed mid-shard, a shard delivered twice, a shard
that kills every worker that runs it."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from batchsvc.inference.engine import EngineRequest, EngineResult, InstantEngine
from batchsvc.inference.models import ModelSpec
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import run_shard
from batchsvc.store.jobs import JobStatus
from tasks.celery_app import create_celery
from tasks.names import SHARD, llm_queue
from tests.support.broker import QueuedMessage, deliver_again, queued
from tests.support.invariants import (
    INSTANT_MODEL,
    ResumeClock,
    Watch,
    answered,
    assert_invariants,
    collect,
    instant_requests,
    job_view,
    mid_shard,
    submit,
    wait_terminal,
)
from tests.support.stack import Stack, Worker, wait_until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


class Supervisor:
    """Restarts a worker that died, at once, as supervisord would. The shard it died
    holding comes back through its lapsed lease (beat's lease checker), not the
    broker's visibility timeout."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.deaths: list[tuple[float, int | None]] = []  # (when it was seen dead, exit code)

    def __call__(self) -> None:
        if self.worker.alive:
            return
        assert self.worker.process is not None
        self.deaths.append((time.monotonic(), self.worker.process.returncode))
        self.worker.start()  # not waited for: it may well die again at its first shard


def shard_deliveries(*workers: Worker) -> int:
    return sum(len(re.findall(r"Task batch\.shard\[[^]]+\] received", w.log_text())) for w in workers)


def test_kill_9_mid_shard_resumes_from_the_checkpoint(
    make_stack: Callable[..., Stack], receiver: WebhookReceiver, instant_log: Path, report: Callable[..., None]
) -> None:
    # 30 ms a request: a 50-request shard runs for 1.5 s, long enough to kill it half-way.
    # The shipped lease and visibility settings: beat's lease checker brings the shard back.
    stack = make_stack(delay_s=0.03, beat=True)
    size, every = stack.settings.shard_size, stack.settings.progress_every
    requests = instant_requests(6 * size)
    job_id = submit(stack, requests, receiver.url)

    wait_until(lambda: mid_shard(instant_log, size), 120, interval=0.02, what="a shard half done")
    stack.llm.kill()  # SIGKILL: no chance to flush or to give the message back
    killed_at = time.monotonic()
    before_kill = answered(instant_log)
    running = job_view(stack, job_id)
    assert running["status"] == "in_progress"
    assert 0 < running["progress"]["completed"] < len(requests)
    shard = sum(before_kill.values()) // size
    shard_ids = [r["custom_id"] for r in requests[shard * size : (shard + 1) * size]]
    in_killed_shard = set(shard_ids) & set(before_kill)
    resumed = ResumeClock(instant_log, shard_ids)

    # Restarted at once, as a supervisor would; the dead delivery stays unacknowledged
    # (visibility_timeout_s is 6 h), and the lapsed lease sends the shard again.
    stack.llm.start()
    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch, while_waiting=resumed)

    outcome = collect(stack, job_id, requests, receiver, instant_log)
    assert resumed.at is not None
    again = {c for c, n in answered(instant_log).items() if n > 1}
    report(
        "kill -9 LLM worker mid-shard, restarted",
        outcome,
        done_at - killed_at,
        f"killed at {len(in_killed_shard)}/{size} of shard {shard}; checkpoint every {every}",
        resume_s=resumed.at - killed_at,
    )
    assert_invariants(outcome, requests, watch)
    assert resumed.at - killed_at <= 30  # the target, at the shipped lease settings
    # Only what the killed run answered after its last checkpoint is answered again:
    # at most progress_every - 1 results waiting for the next checkpoint, plus the one
    # the engine had answered but the shard had not taken yet (the instant engine
    # answers one at a time), or the progress_every results of a checkpoint whose
    # write the kill interrupted. Never more than progress_every.
    assert outcome.recomputed == len(again) <= every
    assert again <= in_killed_shard
    # ... and the rest of what it answered was resumed from the checkpoint, not redone.
    assert len(in_killed_shard - again) >= every


def test_the_same_shard_message_delivered_twice(
    make_stack: Callable[..., Stack], receiver: WebhookReceiver, instant_log: Path, report: Callable[..., None]
) -> None:
    stack = make_stack(delay_s=0.02)
    second = stack.add_worker("llm2", stack.llm)  # so a duplicate can run alongside its original
    second.start()
    second.wait_ready()
    settings = stack.settings
    size = settings.shard_size
    requests = instant_requests(8 * size)
    job_id = submit(stack, requests, receiver.url)
    queue = llm_queue(settings, INSTANT_MODEL)

    # A broker redelivery: a copy of the next waiting shard message (same task id,
    # same chord) where the next free worker takes it, just before the original, so
    # the two workers, which started together, likely run copy and original at once.
    def three_waiting() -> list[QueuedMessage] | None:
        waiting = queued(settings, queue)
        return waiting if len(waiting) >= 3 else None

    copied = wait_until(three_waiting, 60, interval=0.02, what="shards waiting in the queue")[0]
    assert copied.task == SHARD
    deliver_again(settings, copied)
    injected_at = time.monotonic()
    wait_until(lambda: copied.task_id not in {m.task_id for m in queued(settings, queue)}, 60, interval=0.02,
               what="the copy and the original to be taken")  # fmt: skip

    # And shards sent again by name, outside the chord (an operator, or a re-drive
    # racing the original): one that has run already, and one still waiting if any.
    still_waiting = queued(settings, queue)
    resent = [0, still_waiting[-1].args[1] if still_waiting else 7]
    celery = create_celery(settings)
    by_name = [celery.send_task(SHARD, args=[job_id, i], queue=queue) for i in resent]

    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch)
    summaries = [result.get(timeout=120) for result in by_name]
    outcome = collect(stack, job_id, requests, receiver, instant_log)
    runs = shard_deliveries(stack.llm, second)
    report(
        "same shard message delivered twice",
        outcome,
        done_at - injected_at,
        f"shard {copied.args[1]} copied in the broker, shards {resent} sent again by name; "
        f"{runs} shard deliveries for 8 shards",
    )
    assert_invariants(outcome, requests, watch)
    # The chord counted the copied shard once: one finalize, not an early second one.
    assert stack.cpu.log_text().count("Task batch.finalize[") == 2  # received, succeeded
    # What ran twice reports the same shard.
    for summary in summaries:
        assert summary["count"] == size and summary["succeeded"] == size
    assert max(answered(instant_log).values()) <= 2


def test_a_shard_that_kills_every_worker_gives_up_after_the_cap(
    make_stack: Callable[..., Stack], receiver: WebhookReceiver, instant_log: Path, report: Callable[..., None]
) -> None:
    # progress_interval_s is out of the way so checkpoints fall every 10 results exactly;
    # shard_max_attempts is 2 (not 3) to spend one lease timeout less waiting.
    stack = make_stack(shard_max_attempts=2, progress_interval_s=600, beat=True)
    size, every, cap = stack.settings.shard_size, stack.settings.progress_every, stack.settings.shard_max_attempts
    poison = size + 25  # the 26th request of shard 1 kills the worker (exit 137, as the OOM killer would)
    requests = instant_requests(4 * size, poison=[poison])
    job_id = submit(stack, requests, receiver.url)

    supervisor = Supervisor(stack.llm)
    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch, while_waiting=supervisor)

    outcome = collect(stack, job_id, requests, receiver, instant_log)
    first_crash = supervisor.deaths[0][0]
    report(
        "a shard that crashes every attempt",
        outcome,
        done_at - first_crash,
        f"{len(supervisor.deaths)} worker deaths, cap {cap}; {len(outcome.errors)} shard_failed lines",
    )
    assert_invariants(outcome, requests, watch)
    assert [code for _, code in supervisor.deaths] == [137] * cap

    # The shard's requests checkpointed before the crash keep their answers; the rest,
    # the poisoned one included, are error lines. The other shards are untouched.
    shard_start = poison - poison % size
    kept = shard_start + (poison - shard_start) // every * every
    assert [e["custom_id"] for e in outcome.errors] == [r["custom_id"] for r in requests[kept : shard_start + size]]
    assert set(outcome.error_codes) == {"shard_failed"}
    assert len(outcome.results) == len(requests) - (shard_start + size - kept)
    # Each crash after the first re-answers what the one before answered after its last checkpoint.
    counts = answered(instant_log)
    again = {c for c, n in counts.items() if n > 1}
    assert again == {r["custom_id"] for r in requests[kept:poison]}
    assert outcome.recomputed == (cap - 1) * (poison - kept)


class _Killed(Exception):
    """Stands in for the kill: the run ends before its next checkpoint."""


class _TimedEngine:
    """The instant engine's answers, each taking `latency_s` by the engine's own
    account; the run dies after `die_after` answers."""

    def __init__(self, spec: ModelSpec, latency_s: float, die_after: int | None = None):
        self.spec = spec
        self.inner = InstantEngine(spec)
        self.latency_s = latency_s
        self.die_after = die_after

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        for n, request in enumerate(requests):
            if n == self.die_after:
                raise _Killed
            for result in self.inner.run([request]):
                yield dataclasses.replace(result, latency_s=self.latency_s)

    def close(self) -> None:
        pass


def test_avg_response_time_is_right_after_a_resume(make_stack: Callable[..., Stack], receiver: WebhookReceiver) -> None:
    """The stats bug the kill -9 fault shows (0.029 s for an engine that takes 0.030 s
    on every request), pinned down without workers: the same checkpoint and resume,
    called directly on this test's Redis and storage."""
    stack = make_stack(start=False)
    svc = stack.services
    size = svc.settings.shard_size
    job_id = submit(stack, instant_requests(size), receiver.url)
    assert prepare_job(svc, job_id) is not None
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})

    with pytest.raises(_Killed):  # half the shard answered, 20 of those checkpointed
        run_shard(svc, job_id, 0, engine_for=lambda spec: _TimedEngine(spec, 1.0, die_after=size // 2))
    run_shard(svc, job_id, 0, engine_for=lambda spec: _TimedEngine(spec, 1.0))
    job = finalize_job(svc, job_id)

    assert job.stats is not None
    assert job.stats["successful"] == size
    assert job.stats["avg_response_time"] == 1.0  # every request took 1 s
