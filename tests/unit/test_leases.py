"""Leases, the heartbeat, the lease checker and the hung-engine watchdog, on real
Redis without workers (the functions are plain); the fault suite runs them in
real worker processes (tests/faults/test_self_healing.py)."""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from batchsvc.pipeline import leases as leases_module
from batchsvc.pipeline.leases import Heartbeat, redrive_expired, subject_of
from batchsvc.pipeline.watchdog import StuckWatch, kill_frozen, process_start_ticks
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import JobStatus
from tasks.names import BACKUP, LEASES
from tasks.schedule import beat_schedule
from tests.conftest import make_settings
from tests.unit.test_recovery import started


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, shard_size=2)


def test_the_shipped_defaults() -> None:
    shipped = Settings()
    # A kill -9 costs at most lease_ttl_s + lease_check_interval_s (the target is 30 s).
    assert shipped.lease_ttl_s + shipped.lease_check_interval_s <= 30
    assert shipped.lease_renew_s * 3 <= shipped.lease_ttl_s  # two renewals may fail before a lease lapses
    assert shipped.stuck_after_s == 300  # the seed's alert: no progress for 5 minutes
    assert shipped.visibility_timeout_s == 6 * 3600  # long: the lease, not the broker, detects a death


def test_beat_sends_the_lease_checker_every_interval(settings: Settings) -> None:
    entry = beat_schedule(settings)["leases"]
    assert entry["task"] == LEASES
    assert entry["schedule"] == settings.lease_check_interval_s


def test_a_heartbeat_uses_the_configured_watchdog_limit(services: Services) -> None:
    beat = Heartbeat(services, "batch.shard:j:0", "llm@test", "{}")
    assert beat.watch.stuck_after_s == services.settings.stuck_after_s == Settings().stuck_after_s
    assert beat.ttl_s == Settings().lease_ttl_s


def test_a_lease_is_claimed_once_and_a_zombie_cannot_renew_it(services: Services) -> None:
    store = services.leases
    beat = Heartbeat(services, subject_of("batch.shard", "job1", 3), "llm@test", '{"task": "x"}')
    lease = beat.lease
    store.acquire(lease, ttl_s=10)
    assert store.renew(lease.subject, lease.run, ttl_s=10)
    assert store.claim_expired(time.time()) == []  # not yet due
    later = time.time() + 11
    claimed = store.claim_expired(later)
    assert [c.subject for c in claimed] == [lease.subject]
    assert claimed[0] == dataclasses.replace(lease, renewed_at=claimed[0].renewed_at)
    assert store.claim_expired(later) == []  # one claimant only
    assert not store.renew(lease.subject, lease.run, ttl_s=10)  # the old run woke up late
    assert store.held() == []


def test_release_leaves_a_newer_holder_alone(services: Services) -> None:
    store = services.leases
    old = Heartbeat(services, "batch.shard:job1:0", "llm@test", "{}").lease
    new = Heartbeat(services, "batch.shard:job1:0", "llm2@test", "{}").lease
    store.acquire(old, 10)
    store.acquire(new, 10)  # the re-driven run
    assert not store.release(old.subject, old.run)
    assert store.get(new.subject) == new
    assert store.release(new.subject, new.run)
    assert store.get(new.subject) is None


def test_the_heartbeat_renews_from_its_thread_and_releases(services: Services) -> None:
    svc = Services(dataclasses.replace(services.settings, lease_renew_s=0.05))
    with Heartbeat(svc, "batch.finalize:job1", "cpu@test", "{}") as beat:
        first = svc.leases.held()[0][1]
        time.sleep(0.3)
        assert svc.leases.held()[0][1] > first
        assert not beat.lost
    assert svc.leases.held() == []


def test_a_retry_keeps_the_lease_over_its_countdown(services: Services) -> None:
    beat = Heartbeat(services, "batch.shard:job1:0", "llm@test", "{}")
    with beat:
        pass
    assert services.leases.held() == []
    beat = Heartbeat(services, "batch.shard:job1:0", "llm@test", "{}").__enter__()
    beat.end(wait_s=60)
    ((_, deadline),) = services.leases.held()
    assert deadline >= time.time() + 60 + services.settings.lease_ttl_s - 2


def test_at_the_shipped_stuck_after_s_the_watchdog_fires_after_five_minutes_without_a_result() -> None:
    now = [1000.0]
    watch = StuckWatch(Settings().stuck_after_s, clock=lambda: now[0])  # 300 s, on a clock the test turns
    watch.progress()
    now[0] += 299
    assert watch.stuck_for() is None
    now[0] += 2
    assert watch.stuck_for() == 301
    watch.progress()  # a result resets it
    assert watch.stuck_for() is None


def test_the_watchdog_fires_on_no_result_for_stuck_after_s(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StuckWatch(0.2)
    assert watch.stuck_for() is None  # disarmed until the engine starts
    watch.progress()
    assert watch.stuck_for() is None
    time.sleep(0.25)
    assert watch.stuck_for() is not None
    watch.progress()
    assert watch.stuck_for() is None

    # In a heartbeat: the watchdog's action runs from the heartbeat thread.
    # (Its real action kills the process; tests/faults sees that happen in a worker.)
    fired: list[str] = []
    monkeypatch.setattr(leases_module, "end_this_process", fired.append)
    svc = Services(dataclasses.replace(services.settings, lease_renew_s=0.05, stuck_after_s=0))
    with Heartbeat(svc, "batch.shard:job1:0", "llm@test", "{}") as beat:
        beat.watch.stuck_after_s = 0.1
        beat.progress()
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.05)
    assert fired and "no result from the engine" in fired[0]


def test_the_checker_sends_lapsed_steps_of_active_jobs_and_kills_a_frozen_local_worker(services: Services) -> None:
    active = started(services)
    ended = started(services)
    services.jobs.update(ended, status=JobStatus.COMPLETED.value)
    frozen = subprocess.Popen(["sleep", "60"])  # stands in for a SIGSTOPped worker on this host
    try:
        for job_id in (active, ended):
            lease = Heartbeat(services, subject_of("batch.shard", job_id, 1), "llm@test", f'"{job_id}"').lease
            lease = dataclasses.replace(lease, pid=frozen.pid, pid_start=process_start_ticks(frozen.pid))
            services.leases.acquire(lease, ttl_s=1)
        sent: list[str] = []
        assert redrive_expired(services, lambda lease: sent.append(lease.message), now=time.time() + 0.5) == []
        redriven = redrive_expired(services, lambda lease: sent.append(lease.message), now=time.time() + 2)
        assert [r.subject for r in redriven] == [subject_of("batch.shard", active, 1)]
        assert sent == [f'"{active}"']
        assert frozen.wait(timeout=5) == -signal.SIGKILL
        assert services.leases.held() == []
    finally:
        frozen.kill()
        frozen.wait()


def test_kill_frozen_never_kills_another_process_under_a_reused_pid() -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert not kill_frozen("some-other-host", other.pid, process_start_ticks(other.pid))
        assert not kill_frozen(socket.gethostname(), other.pid, process_start_ticks(other.pid) + 1)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_beat_backs_the_job_state_up_daily(settings: Settings) -> None:
    entry = beat_schedule(settings)["backup"]
    assert entry["task"] == BACKUP
    assert entry["schedule"] == Settings().backup_interval_s == 24 * 3600
