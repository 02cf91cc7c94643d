"""Faults at the end of a job: the webhook receiver down then failing, and
finalize run twice at once."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchsvc.storage import layout
from tasks.celery_app import create_celery
from tasks.names import FINALIZE
from tests.support.invariants import (
    Watch,
    assert_invariants,
    collect,
    instant_requests,
    job_view,
    submit,
    wait_terminal,
)
from tests.support.stack import Stack, Worker, wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver_proxy(receiver: WebhookReceiver) -> Iterator[TcpProxy]:
    """The webhook receiver's only address: cut() is a receiver that is down."""
    with TcpProxy(("127.0.0.1", receiver.port)).start() as proxy:
        yield proxy


def test_webhook_receiver_down_then_failing_then_up(
    make_stack: Callable[..., Stack],
    receiver: WebhookReceiver,
    receiver_proxy: TcpProxy,
    instant_log: Path,
    report: Callable[..., None],
) -> None:
    stack = make_stack(webhook_backoff_s=0.5, webhook_backoff_max_s=4.0)
    requests = instant_requests(2 * stack.settings.shard_size)
    receiver_proxy.cut()  # down: connections refused
    job_id = submit(stack, requests, f"{receiver_proxy.url}/hooks")
    watch = Watch()
    completed_at = wait_terminal(stack, job_id, watch)

    def attempts_failed() -> int:
        return len(re.findall(rf"webhook for {job_id} attempt \d+ failed", stack.cpu.log_text()))

    def still_completed() -> bool:
        watch.see(job_view(stack, job_id))
        return True

    wait_until(lambda: still_completed() and attempts_failed() >= 2, 60, what="two refused deliveries")
    receiver.answer = 500  # up, but failing
    receiver_proxy.restore()
    wait_until(lambda: still_completed() and len(receiver.deliveries(job_id)) >= 2, 60, what="two 500s")
    receiver.answer = 200
    wait_until(lambda: still_completed() and any(d.ok for d in receiver.deliveries(job_id)), 60, what="a 2xx")
    delivered_at = time.monotonic()

    outcome = collect(stack, job_id, requests, receiver, instant_log)
    delays = [float(d) for d in re.findall(rf"webhook for {job_id} attempt \d+ failed .*; retry in (\d+)s",
                                           stack.cpu.log_text())]  # fmt: skip
    report(
        "webhook receiver down, then 500, then up",
        outcome,
        delivered_at - completed_at,
        f"{attempts_failed()} failed attempts (retry in {delays} s), "
        f"{len(outcome.deliveries)} received; time is job end -> delivered",
    )
    assert_invariants(outcome, requests, watch)
    assert watch.statuses[-1] == "completed" and watch.statuses.count("completed") == 1  # never left it
    answered = [d.answered for d in outcome.deliveries]
    assert answered[:2] == [500, 500] and answered[-1] == 200 and answered.count(200) == 1
    # The service asked for growing waits between attempts.
    assert delays == sorted(delays) and delays[-1] > delays[0]
    # The receiver has answered 200; the worker records it just after reading that answer.
    wait_until(lambda: stack.services.jobs.get(job_id).webhook_status == "delivered", 30, what="delivered")


def pause(*workers: Worker) -> None:
    for worker in workers:
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGSTOP)


def resume(*workers: Worker) -> None:
    for worker in workers:
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGCONT)


def test_finalize_run_twice_concurrently(
    make_stack: Callable[..., Stack], receiver: WebhookReceiver, instant_log: Path, report: Callable[..., None]
) -> None:
    stack = make_stack()
    second = stack.add_worker("cpu2", stack.cpu)
    second.start()
    second.wait_ready()
    cpus = (stack.cpu, second)
    size = stack.settings.shard_size
    shards = 30  # enough to merge that two finalizers overlap
    requests = instant_requests(shards * size)
    job_id = submit(stack, requests, receiver.url)

    # Both CPU workers are paused, idle, while the shards run; the chord's finalize
    # and a second one sent by name then wait for them, and both resume at once.
    def logs() -> str:
        return "".join(w.log_text() for w in cpus)

    wait_until(lambda: re.search(r"Task batch\.prepare\[[^]]+\] succeeded", logs()), 60, what="prepare to finish")
    pause(*cpus)
    try:
        wait_until(lambda: stack.llm.log_text().count("] succeeded") == shards, 120, what="every shard to finish")
        create_celery(stack.settings).send_task(FINALIZE, args=[[], job_id], queue=stack.settings.cpu_queue)
        sent_at = time.monotonic()
    finally:
        resume(*cpus)

    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch)
    wait_until(lambda: len(re.findall(r"Task batch\.finalize\[[^]]+\] succeeded", logs())) == 2, 60,
               what="both finalizers to end")  # fmt: skip
    outcome = collect(stack, job_id, requests, receiver, instant_log)
    merged = logs().count(f"job {job_id} completed:")  # each finalizer that merged logs this
    report(
        "finalize run twice concurrently",
        outcome,
        done_at - sent_at,
        f"{merged} of 2 finalizers merged the shards",
    )
    assert_invariants(outcome, requests, watch)
    assert merged >= 1
    # One results object and one errors object, at their fixed keys.
    keys = [i.key for i in stack.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))]
    assert [k for k in keys if k.endswith(("results.jsonl", "errors.jsonl"))] == sorted(
        [layout.errors_key(layout.JobKey("default", job_id)), layout.results_key(layout.JobKey("default", job_id))]
    )
    assert len(outcome.deliveries) == 1  # one webhook task, not one per finalizer
