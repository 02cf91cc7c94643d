"""The embedded stack's supervisor (scripts/stack.py on supervisord, with
scripts/crashguard.py): a killed worker comes back with no one restarting it by
hand, and a crash loop is given up on and reported. Each test runs its own
supervisord, on a Procfile and var/ of its own (BATCHSVC_STACK_PROCFILE,
BATCHSVC_STACK_VAR), with the shipped restart settings."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from batchsvc.settings import PROJECT_ROOT, Settings
from tests.conftest import REDIS_BASE
from tests.support.invariants import (
    ResumeClock,
    Watch,
    answered,
    assert_invariants,
    collect,
    instant_requests,
    mid_shard,
    submit,
    wait_terminal,
)
from tests.support.stack import Stack, wait_until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


class Supervised:
    """`scripts/stack.py` on a Procfile of the test's own."""

    def __init__(self, tmp_path: Path, procfile: dict[str, str], env: dict[str, str]):
        (tmp_path / "Procfile").write_text("".join(f"{name}: {cmd}\n" for name, cmd in procfile.items()))
        self.var = tmp_path / "var"
        self.env = {**env, "BATCHSVC_STACK_PROCFILE": str(tmp_path / "Procfile"), "BATCHSVC_STACK_VAR": str(self.var)}
        self.names = list(procfile)

    def run(self, *args: str) -> str:
        command = [sys.executable, str(PROJECT_ROOT / "scripts" / "stack.py"), *args]
        done = subprocess.run(command, env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def status(self) -> dict[str, str]:
        return {line.split()[0]: line for line in self.run("status", *self.names).splitlines()}

    def pid(self, name: str) -> int | None:
        found = re.search(r"RUNNING\s+pid (\d+)", self.status()[name])
        return int(found.group(1)) if found else None

    def log(self, name: str) -> str:
        path = self.var / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    made: list[Supervised] = []

    def make(procfile: dict[str, str], env: dict[str, str]) -> Supervised:
        sup = Supervised(tmp_path, procfile, env)
        made.append(sup)
        sup.run("up", *sup.names)
        return sup

    yield make
    for sup in made:
        sup.run("down")


def test_kill_9_mid_shard_the_supervisor_restarts_the_worker(
    make_stack: Callable[..., Stack],
    supervised: Callable[..., Supervised],
    receiver: WebhookReceiver,
    instant_log: Path,
    report: Callable[..., None],
) -> None:
    stack = make_stack(delay_s=0.03, beat=True, start=False)
    assert Settings().restart_max_crashes == stack.settings.restart_max_crashes
    stack.cpu.start()
    stack.cpu.wait_ready()
    llm = stack.llm
    command = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", ",".join(llm.queues),
               "-n", llm.nodename, "--pool", "solo", "--prefetch-multiplier", "1", "--loglevel", "INFO",
               "--without-gossip", "--without-mingle"]  # fmt: skip
    sup = supervised({"llm": shlex.join(command)}, llm.env)
    wait_until(lambda: f"{llm.nodename} ready." in sup.log("llm"), 120, what="the supervised worker ready")
    wait_until(lambda: sup.pid("llm"), 30, what="supervisord to count the worker RUNNING (after startsecs)")
    size, every = stack.settings.shard_size, stack.settings.progress_every
    requests = instant_requests(6 * size)
    job_id = submit(stack, requests, receiver.url)

    wait_until(lambda: mid_shard(instant_log, size), 120, interval=0.02, what="a shard half done")
    pid = sup.pid("llm")
    assert pid is not None
    subprocess.run(["kill", "-9", str(pid)], check=True)
    killed_at = time.monotonic()
    shard = sum(answered(instant_log).values()) // size
    resumed = ResumeClock(instant_log, [r["custom_id"] for r in requests[shard * size : (shard + 1) * size]])

    watch = Watch()
    done_at = wait_terminal(stack, job_id, watch, while_waiting=resumed)
    outcome = collect(stack, job_id, requests, receiver, instant_log)
    assert resumed.at is not None
    new_pid = sup.pid("llm")
    report(
        "kill -9 LLM worker mid-shard, supervisord",
        outcome,
        done_at - killed_at,
        f"supervisord restarted it (pid {pid} -> {new_pid}); nobody restarted it by hand",
        resume_s=resumed.at - killed_at,
    )
    assert_invariants(outcome, requests, watch)
    assert new_pid is not None and new_pid != pid
    assert "GAVE UP" not in sup.status()["llm"]  # one crash is not a loop
    # `make up` again leaves a running process alone; `make down` stops everything.
    assert "already running" in sup.run("up", "llm")
    assert sup.pid("llm") == new_pid
    sup.run("down")
    assert "supervisord is not running" in sup.status()["llm"]
    assert subprocess.run(["kill", "-0", str(new_pid)], capture_output=True).returncode != 0  # the worker is gone
    assert resumed.at - killed_at <= 30
    assert outcome.recomputed <= every


def test_a_crash_loop_is_given_up_and_reported(
    supervised: Callable[..., Supervised], redis_env: dict[str, str]
) -> None:
    settings = Settings()
    # A worker that dies as it starts (a bad config): supervisord's own backoff,
    # then FATAL. One that runs past startsecs, then crashes (an OOM at its first
    # shard): restarted at once each time, until crashguard stops it at
    # restart_max_crashes within restart_window_s (the shipped 3 in 600 s).
    sup = supervised(
        {"deadstart": "bash -c 'echo bad config; exit 1'", "crashy": "bash -c 'sleep 5.5; exit 3'"}, redis_env
    )

    def given_up() -> bool:
        line = sup.status()["crashy"]
        return "GAVE UP" in line and line.split()[1] == "STOPPED"

    wait_until(given_up, 90, interval=0.5, what="crashguard to give up on crashy and stop it")
    status = sup.status()
    assert re.search(rf"crashy\s+STOPPED .* GAVE UP at .*crashed {settings.restart_max_crashes} times in "
                     rf"{settings.restart_window_s}s", status["crashy"]), status  # fmt: skip
    assert re.search(r"deadstart\s+FATAL .* GAVE UP at .*FATAL", status["deadstart"]), status
    # The log says so.
    guard_log = (sup.var / "log" / "crashguard.log").read_text()
    assert (
        f"crashy crashed {settings.restart_max_crashes} times in {settings.restart_window_s:.0f}s: stopped" in guard_log
    )
    assert "deadstart could not start" in guard_log
    # The record a metric scrapes.
    client = redis.Redis.from_url(redis_env["BATCHSVC_STATE_REDIS_URL"])
    key = f"{redis_env['BATCHSVC_REDIS_PREFIX']}:supervisor:gave_up"

    def record() -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}

    assert set(record()) == {"crashy", "deadstart"}
    assert record()["crashy"]["crashes"] == settings.restart_max_crashes

    # Given up means no more starts.
    def spawns() -> int:
        return (sup.var / "log" / "supervisord.log").read_text().count("spawned: 'crashy'")

    # (supervisord may have spawned it once more before crashguard heard of the last
    # crash; that start is stopped at once.)
    at_give_up = spawns()
    assert settings.restart_max_crashes <= at_give_up <= settings.restart_max_crashes + 1
    time.sleep(6.5)  # longer than crashy lives: a restart would have shown by now
    assert spawns() == at_give_up

    # `make up` starts it again (after a fix), and its record goes once it runs.
    sup.run("up", "crashy")
    wait_until(lambda: "crashy" not in record(), 20, what="the record to go once crashy runs")
    assert spawns() > at_give_up


@pytest.fixture
def redis_env() -> Iterator[dict[str, str]]:
    """The environment of the supervised processes and crashguard: the test Redis, a prefix of its own."""
    prefix = f"sup-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BATCHSVC_STATE_REDIS_URL": f"{REDIS_BASE}/12", "BATCHSVC_REDIS_PREFIX": prefix}
    yield env
    redis.Redis.from_url(f"{REDIS_BASE}/12").delete(f"{prefix}:supervisor:gave_up")


def test_memory_budget_exits_are_restarted_and_not_counted_as_crashes(
    make_stack: Callable[..., Stack],
    supervised: Callable[..., Supervised],
    receiver: WebhookReceiver,
    instant_log: Path,
) -> None:
    # Two requests, in two shards, each take the worker over its memory budget: four
    # exits (each of them twice), more than restart_max_crashes (3). They are answered
    # worker_memory_exceeded, and crashguard does not stop the worker for it.
    # worker_max_rss_mb is lowered from 16384 MB to 1500 MB (this machine is shared), and
    # at the instant engine's 250 MB/s a GROW request reaches it after startsecs (5 s).
    stack = make_stack(shard_size=10, progress_every=5, worker_max_rss_mb=1500, beat=True, start=False)
    settings = stack.settings
    assert Settings().restart_max_crashes == settings.restart_max_crashes == 3
    stack.cpu.start()
    stack.cpu.wait_ready()
    llm = stack.llm
    command = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", ",".join(llm.queues),
               "-n", llm.nodename, "--pool", "solo", "--prefetch-multiplier", "1", "--loglevel", "INFO",
               "--without-gossip", "--without-mingle"]  # fmt: skip
    sup = supervised({"llm": shlex.join(command)}, llm.env)
    wait_until(lambda: sup.pid("llm"), 60, what="supervisord to count the worker RUNNING (after startsecs)")
    requests = instant_requests(30, grow=[3, 24])
    job_id = submit(stack, requests, receiver.url)

    watch = Watch()
    wait_terminal(stack, job_id, watch, timeout=300)
    outcome = collect(stack, job_id, requests, receiver, instant_log)
    assert_invariants(outcome, requests, watch)
    assert {e["custom_id"]: e["response"]["body"]["error"]["code"] for e in outcome.errors} == {
        requests[3]["custom_id"]: "worker_memory_exceeded",
        requests[24]["custom_id"]: "worker_memory_exceeded",
    }
    exits = re.findall(r"exited: llm \(exit status (\d+); (\w+)\)", (sup.var / "log" / "supervisord.log").read_text())
    assert exits == [("75", "expected")] * 4
    wait_until(lambda: sup.pid("llm"), 60, what="the worker RUNNING again after its last exit")
    assert "GAVE UP" not in sup.status()["llm"]
    assert "llm exited unexpectedly" not in (sup.var / "log" / "crashguard.log").read_text()
