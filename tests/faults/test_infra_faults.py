"""Faults of what the workers stand on: Redis restarted mid-job, object storage
unreachable during shard writes and again during finalize."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.beat import Beat
from tests.support.broker import queued
from tests.support.invariants import (
    Watch,
    assert_invariants,
    collect,
    instant_requests,
    job_view,
    mid_shard,
    submit,
    wait_terminal,
)
from tests.support.moto_server import MotoServer
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, Worker, wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def storage_retries(worker: Worker, since_start: bool = False) -> Counter[str]:
    """Retries a worker logged because storage was unavailable, by task id."""
    found = re.findall(r"Task batch\.\w+\[([^]]+)\] retry: .*StorageUnavailable", worker.log_text(since_start))
    return Counter(found)


@pytest.fixture
def s3_proxy(moto: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", moto.port)).start() as proxy:
        yield proxy


@contextmanager
def sweeper(stack: Stack, log_dir: Path) -> Iterator[Beat]:
    """Celery beat, sending batch.sweep every sweep_interval_s."""
    beat = Beat(stack.cpu.env, log_dir).start()
    try:
        yield beat
    finally:
        beat.stop()


def restart_redis_mid_shard(stack: Stack, redis_server: RedisServer, instant_log: Path) -> float:
    """SHUTDOWN Redis half-way through a shard, keep it down until the running shard
    has failed on it and both workers have lost their broker connection, then start
    it again on the same port and AOF. Returns when it went down."""
    wait_until(lambda: mid_shard(instant_log, stack.settings.shard_size), 120, interval=0.02,
               what="a shard half done")  # fmt: skip
    redis_server.shutdown()
    down_at = time.monotonic()
    wait_until(lambda: re.search(r"Task batch\.shard\[[^]]+\] (reject|retry)", stack.llm.log_text()), 60,
               what="the running shard to fail on Redis")  # fmt: skip
    for worker in (stack.cpu, stack.llm):
        wait_until(lambda w=worker: "Connection to broker lost" in w.log_text(), 60,
                   what=f"{worker.name} to lose Redis")  # fmt: skip
    redis_server.start_again()
    return down_at


def test_redis_restarted_mid_job(
    make_stack: Callable[..., Stack],
    redis_server: RedisServer,
    receiver: WebhookReceiver,
    instant_log: Path,
    tmp_path: Path,
    report: Callable[..., None],
) -> None:
    # Broker, results and job state all live on this test's own redis-server (AOF on).
    # What a restart loses anyway (the running shard's delivery), the sweeper re-drives.
    # stall_after_s lowered from 900 to 5 and sweep_interval_s from 60 to 2: a delivery lost with
    # Redis's memory is found only by the sweeper, and its shipped 15 minutes do not fit CI.
    # The sweeper is the backstop; leases (tested at their shipped values) catch dead workers.
    # tests/unit/test_recovery.py checks both shipped values (900 s, 60 s) on their own.
    stack = make_stack(delay_s=0.02, stall_after_s=5, sweep_interval_s=2)
    with sweeper(stack, tmp_path) as beat:
        requests = instant_requests(8 * stack.settings.shard_size)
        job_id = submit(stack, requests, receiver.url)
        down_at = restart_redis_mid_shard(stack, redis_server, instant_log)
        watch = Watch()
        done_at = wait_terminal(stack, job_id, watch)
        outcome = collect(stack, job_id, requests, receiver, instant_log)
        sweeps = beat.log_path.read_text(errors="replace").count("Scheduler: Sending due task")
    redriven = stack.cpu.log_text().count(f"sweeper re-drove job {job_id}")
    report(
        "Redis restarted mid-job",
        outcome,
        done_at - down_at,
        f"re-driven by the sweeper {redriven}x; beat sent {sweeps} sweeps",
    )
    assert_invariants(outcome, requests, watch)


def test_a_redis_restart_costs_the_running_shard_no_attempt(
    make_stack: Callable[..., Stack],
    redis_server: RedisServer,
    receiver: WebhookReceiver,
    instant_log: Path,
    tmp_path: Path,
) -> None:
    # One attempt allowed: a restart that counted as the shard's failure makes it give up.
    # stall_after_s lowered from 900 to 5 and sweep_interval_s from 60 to 2: a delivery lost with
    # Redis's memory is found only by the sweeper, and its shipped 15 minutes do not fit CI.
    # The sweeper is the backstop; leases (tested at their shipped values) catch dead workers.
    # tests/unit/test_recovery.py checks both shipped values (900 s, 60 s) on their own.
    stack = make_stack(delay_s=0.02, shard_max_attempts=1, stall_after_s=5, sweep_interval_s=2)
    with sweeper(stack, tmp_path):
        requests = instant_requests(4 * stack.settings.shard_size)
        job_id = submit(stack, requests, receiver.url)
        restart_redis_mid_shard(stack, redis_server, instant_log)
        watch = Watch()
        wait_terminal(stack, job_id, watch)
        outcome = collect(stack, job_id, requests, receiver, instant_log)
    assert_invariants(outcome, requests, watch)
    assert outcome.error_codes == {}, "requests failed although only Redis restarted"


def test_object_storage_unreachable_during_shard_writes_and_finalize(
    make_stack: Callable[..., Stack],
    s3_proxy: TcpProxy,
    receiver: WebhookReceiver,
    instant_log: Path,
    report: Callable[..., None],
) -> None:
    stack = make_stack(
        delay_s=0.02,
        storage_backend="s3",
        s3_endpoint=s3_proxy.endpoint,  # every S3 call of the API and the workers goes through the proxy
        s3_bucket=f"faults-{uuid.uuid4().hex[:8]}",
        s3_access_key="test",
        s3_secret_key="test",
    )
    settings = stack.settings
    size = settings.shard_size
    requests = instant_requests(8 * size)
    job_id = submit(stack, requests, receiver.url)

    # The CPU worker is stopped once it has sharded the job, so finalize waits in
    # its queue for the second outage.
    wait_until(lambda: re.search(r"Task batch\.prepare\[[^]]+\] succeeded", stack.cpu.log_text()), 60,
               what="prepare to finish")  # fmt: skip
    stack.cpu.kill()

    # Outage 1, half-way through a shard: its next checkpoint write fails, and the
    # shard is retried with backoff; what was not yet checkpointed is answered again.
    wait_until(lambda: mid_shard(instant_log, size), 120, interval=0.02, what="a shard half done")
    s3_proxy.cut()
    cut_at = time.monotonic()
    # Down for a few seconds: until one shard has failed, waited its backoff and failed again.
    wait_until(lambda: max(storage_retries(stack.llm).values(), default=0) >= 2, 60, what="a shard to fail twice")
    at_cut = job_view(stack, job_id)["progress"]["completed"]
    s3_proxy.restore()
    wait_until(lambda: job_view(stack, job_id)["progress"]["completed"] > at_cut, 120, interval=0.05,
               what="shards to write again")  # fmt: skip
    shards_back_s = time.monotonic() - cut_at

    # Outage 2, during finalize: every shard is done and finalize waits for a worker.
    wait_until(lambda: queued(settings, settings.cpu_queue), 120, what="finalize to be queued")
    assert job_view(stack, job_id)["progress"]["completed"] == len(requests)
    s3_proxy.cut()
    cut_at = time.monotonic()
    stack.cpu.start()
    wait_until(lambda: max(storage_retries(stack.cpu, True).values(), default=0) >= 2, 60,
               what="finalize to fail twice")  # fmt: skip
    assert job_view(stack, job_id)["status"] == "finalizing"
    s3_proxy.restore()

    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch)
    outcome = collect(stack, job_id, requests, receiver, instant_log)
    shard_retries = sum(storage_retries(stack.llm).values())
    report(
        "object storage unreachable (shards, finalize)",
        outcome,
        done_at - cut_at,
        f"recover_s from the finalize cut; shards wrote again {shards_back_s:.1f}s after the first; "
        f"{shard_retries} shard and {sum(storage_retries(stack.cpu, True).values())} finalize retries",
    )
    assert_invariants(outcome, requests, watch)
    # What an outage makes the shards redo is bounded by the checkpoint interval, per failed run.
    assert outcome.recomputed <= shard_retries * settings.progress_every
