"""A shard whose worker goes over its memory budget, on real Redis and local
storage without workers: each start of the shard is a call of run_shard, and the
worker's exit is an exception the memory watch raises from its real check. The
fault suite does the same with real workers (tests/faults/test_memory_budget.py)."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Generator, Iterable
from pathlib import Path

import orjson
import pytest

from batchsvc.inference.engine import EngineRequest, EngineResult, InstantEngine, instant_prompt
from batchsvc.inference.memory_budget import CODE, EXIT_REQUEST_BLAMED, MemoryWatch
from batchsvc.inference.models import ModelSpec
from batchsvc.pipeline.leases import Heartbeat, subject_of
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import ShardRun, run_shard
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import JobStatus, MemoryExits
from tests.conftest import make_settings
from tests.support.invariants import INSTANT_MODEL, answered, instant_requests

SIZE, GROWS = 20, 7  # one shard of 20; its 8th request takes the worker over its budget


class _Exited(BaseException):
    """Stands in for the worker's exit: the run ends where it is, nothing flushed."""


def _exit(code: int) -> None:
    raise _Exited(code)


class _Budgeted:
    """The instant engine on a worker with a budget of 1000 MB, which a GROW_MARKER
    request takes to 1500 MB: the watch's real check runs then (its sample says
    so), records what the shard held, and ends the run."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.inner = InstantEngine(spec)
        self.watch = MemoryWatch(1000, sample=lambda: (1500.0, []), exit=_exit)

    def run(self, requests: Iterable[EngineRequest]) -> Generator[EngineResult, None, None]:
        for request in requests:
            if InstantEngine.GROW_MARKER in instant_prompt(request.body):
                self.watch.check()
            yield from self.inner.run([request])

    def close(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Checkpoints every 5 results, so the exit loses the two answered after the last one.
    return make_settings(tmp_path, shard_size=SIZE, progress_every=5, progress_interval_s=600)


@pytest.fixture
def instant_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BATCHSVC_INSTANT_LOG", str(tmp_path / "answers.log"))
    return tmp_path / "answers.log"


def running_job(svc: Services, requests: list[dict]) -> str:
    data = b"".join(orjson.dumps(r) + b"\n" for r in requests)
    job = submit_job(svc, tenant="default", model=INSTANT_MODEL, upload=io.BytesIO(data), enqueue=lambda _id: None)
    assert prepare_job(svc, job.id) is not None
    assert svc.jobs.transition(job.id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    return job.id


def start(svc: Services, job_id: str, exit_code: int | None = None) -> bool:
    """One start of shard 0, counted as the shard task counts it; True if it
    finished, False if the worker exited (with `exit_code`)."""
    svc.jobs.shard_attempt(job_id, 0)
    try:
        run_shard(svc, job_id, 0, engine_for=_Budgeted)
    except _Exited as exited:
        assert exited.args == (exit_code,)
        return False
    return True


def output_lines(svc: Services, job_id: str) -> list[dict]:
    summary = run_shard(svc, job_id, 0, engine_for=_Budgeted)  # finished: its summary, nothing runs
    with svc.storage.open(summary.output_key) as stream:
        return [orjson.loads(raw) for raw in stream if raw.strip()]


def test_the_request_that_busts_the_budget_fails_alone(services: Services, instant_log: Path) -> None:
    requests = instant_requests(SIZE, grow=[GROWS])
    ids = [r["custom_id"] for r in requests]
    job_id = running_job(services, requests)

    # 1st start: the engine takes the requests one by one; at the 8th the worker exits.
    assert not start(services, job_id, EXIT_REQUEST_BLAMED)
    assert services.jobs.memory_exits(job_id, 0).suspects == (ids[GROWS],)  # the only one the engine held
    # 2nd start: the others first, together; then the suspect alone, and the worker exits again.
    assert not start(services, job_id, EXIT_REQUEST_BLAMED)
    exits = services.jobs.memory_exits(job_id, 0)
    assert exits.culprits == {ids[GROWS]: 1500.0} and exits.suspects == () and exits.exits == 2
    # 3rd start: the culprit's error line, and nothing left to run.
    assert start(services, job_id)

    lines = output_lines(services, job_id)
    assert [line["custom_id"] for line in lines] == ids  # each once, in input order
    failed = [line for line in lines if line["error"] or line["response"]["status_code"] != 200]
    assert [line["custom_id"] for line in failed] == [ids[GROWS]]
    error = failed[0]["response"]["body"]["error"]
    assert error["code"] == CODE == "worker_memory_exceeded"
    assert "1500 MB" in error["message"] and "budget of 1000 MB (worker_max_rss_mb)" in error["message"]
    # The exits did not count against shard_max_attempts: only the start that finished did.
    assert services.jobs.shard_attempt(job_id, 0, 0) == 1
    # What the first exit lost (answered after the checkpoint at 5) ran again; the
    # culprit never reached the engine's answers; nothing else ran twice.
    counts = answered(instant_log)
    assert {c for c, n in counts.items() if n == 2} == set(ids[5:GROWS])
    assert ids[GROWS] not in counts
    assert set(counts) == set(ids) - {ids[GROWS]}


def test_each_exit_narrows_the_suspects_down_or_counts_as_a_start() -> None:
    first = MemoryExits().after_exit(["a", "b", "c"], None, 1200, 1000)
    assert first.suspects == ("a", "b", "c") and first.narrows(MemoryExits())
    again = first.after_exit(["c", "a"], None, 1300, 1000)  # nothing new in flight with the others
    assert again == dataclasses.replace(first, exits=2) and not again.narrows(first)
    grouped = again.after_exit(["b", "c"], ["b", "c"], 1400, 1000)  # over while the group (b, c) ran
    assert grouped.suspects == ("a",) and grouped.alone == ("b", "c") and grouped.narrows(again)
    found = grouped.after_exit(["c"], ["c"], 1500, 1000)
    assert found.culprits == {"c": 1500} and found.alone == ("b",) and found.narrows(grouped)
    # An exit after the one it ran alone was answered names nobody.
    assert not found.after_exit([], ["b"], 1500, 1000).narrows(found)
    assert MemoryExits.from_json(found.to_json()) == found
    # A record written before `alone` existed still reads.
    assert MemoryExits.from_json(b'{"suspects": ["a"], "culprits": {}, "budget_mb": 1, "exits": 1}').suspects == ("a",)


class _TakesAll(_Budgeted):
    """Like vLLM: takes the whole run at once, then answers; a GROW_MARKER request
    among them takes the worker over its budget before any answer."""

    def run(self, requests: Iterable[EngineRequest]) -> Generator[EngineResult, None, None]:
        taken = list(requests)
        if any(InstantEngine.GROW_MARKER in instant_prompt(r.body) for r in taken):
            self.watch.check()
        yield from self.inner.run(taken)


def test_with_an_engine_that_takes_the_whole_shard_groups_then_one_alone(services: Services, instant_log: Path) -> None:
    requests = instant_requests(SIZE, grow=[GROWS])
    ids = [r["custom_id"] for r in requests]
    job_id = running_job(services, requests)

    def start_all(expect_exit: bool) -> None:
        services.jobs.shard_attempt(job_id, 0)
        try:
            run_shard(services, job_id, 0, engine_for=_TakesAll)
        except _Exited as exited:
            assert expect_exit and exited.args == (EXIT_REQUEST_BLAMED,)
        else:
            assert not expect_exit

    start_all(expect_exit=True)  # all 20 in flight: all suspects
    assert services.jobs.memory_exits(job_id, 0).suspects == tuple(ids)
    start_all(expect_exit=True)  # groups of 5: the first answered, the second (5-9) over the budget
    exits = services.jobs.memory_exits(job_id, 0)
    # (0-4 stay listed as suspects; they are answered, so the next start skips them)
    assert exits.alone == tuple(ids[5:10]) and exits.suspects == tuple(ids[:5] + ids[10:])
    start_all(expect_exit=True)  # 5 and 6 alone, answered; 7 alone, over the budget
    assert services.jobs.memory_exits(job_id, 0).culprits == {ids[GROWS]: 1500.0}
    start_all(expect_exit=False)  # 8 and 9 alone, then 10-19 in groups of 4
    assert services.jobs.shard_attempt(job_id, 0, 0) == 1  # three exits, none counted

    lines = output_lines(services, job_id)
    assert [line["custom_id"] for line in lines] == ids
    assert [line["custom_id"] for line in lines if line["response"]["status_code"] != 200] == [ids[GROWS]]
    counts = answered(instant_log)
    assert ids[GROWS] not in counts and set(counts) == set(ids) - {ids[GROWS]}
    assert max(counts.values()) == 1  # nothing was answered before an exit and lost


def test_a_suspect_that_runs_alone_within_the_budget_is_answered(services: Services, instant_log: Path) -> None:
    requests = instant_requests(6)
    job_id = running_job(services, requests)
    ids = [r["custom_id"] for r in requests]
    exits = MemoryExits().after_exit(ids[2:4], None, 1500, 1000)
    services.jobs.record_memory_exit(job_id, 0, exits, refund=False)
    run = ShardRun(services, services.jobs.get(job_id), 0, services.models.get(INSTANT_MODEL))
    summary = run.execute(InstantEngine(run.spec))
    assert summary.succeeded == 6 and summary.failed == 0
    # Two runs of one request each after the run of the four others.
    assert instant_log.read_text().split() == ids[:2] + ids[4:] + ids[2:4]


def test_a_lapsed_lease_is_claimed_at_once(services: Services) -> None:
    beat = Heartbeat(services, subject_of("batch.shard", "job1", 0), "llm@test", "{}")
    services.leases.acquire(beat.lease, ttl_s=services.settings.lease_ttl_s)
    beat.lapse()
    (claimed,) = services.leases.claim_expired(time.time())  # not lease_ttl_s (15 s) later
    assert claimed.run == beat.lease.run and beat.lost
