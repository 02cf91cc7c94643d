"""The grammar compile budget's own rules, on the real compiler child (xgrammar
with the tiny model's tokenizer): a stop interrupts a compile, a stop that came
first starts none, and neither is remembered as a verdict on the schema. The job's
compile budget is kept in the real Redis (the `services` fixture): once spent,
uncached schemas fail at once and cached verdicts still apply; a run yields the
worker before a compile only after its share, and only when a shard waits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from batchsvc.inference.grammar_budget import (
    JOB_CODE,
    Allowance,
    Budget,
    Compiler,
    YieldWorker,
    allowed,
    interruptible,
)
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.store.jobs import JobStore

TOKENIZER = str(Path(__file__).resolve().parents[2] / "var" / "models" / "tiny-random")
SIMPLE = {"type": "object", "properties": {"score": {"type": "integer"}}}
# xgrammar needs about 30 s for this one on the CI machine (tests/hostile/test_grammar.py).
SLOW = {"type": "string", "pattern": "(a|b|c|d|e){1,9000}"}


@pytest.fixture(scope="module")
def compiler() -> Iterator[Compiler]:
    if not Path(TOKENIZER).is_dir():
        pytest.fail(f"no tiny model at {TOKENIZER}: run `make setup`")
    compiler = Compiler(TOKENIZER, any_whitespace=False, budget=Budget())  # the shipped budget
    yield compiler
    compiler.close()


def test_a_stop_that_came_first_starts_no_compile_and_is_not_remembered(compiler: Compiler) -> None:
    with interruptible(lambda: "batch_cancelled"):
        stopped = compiler.check(SIMPLE)
    assert (stopped.ok, stopped.stopped) == (False, "batch_cancelled")
    assert "before its grammar compiled" in stopped.reason
    assert compiler.check(SIMPLE).ok  # the schema itself is fine: compiled now, outside the stop


def test_a_stop_interrupts_a_compile_and_is_not_a_verdict_on_the_schema(compiler: Compiler) -> None:
    asked = []

    def stop() -> str | None:
        asked.append(1)
        return "batch_expired" if len(asked) > 2 else None  # the first ask is before the compile starts

    with interruptible(stop):
        verdict = compiler.check(SLOW)
    assert (verdict.ok, verdict.stopped) == (False, "batch_expired")
    assert "while its grammar compiled" in verdict.reason
    assert verdict.seconds < Budget().seconds  # cut short by the stop, not by the budget
    with interruptible(lambda: "batch_cancelled"):
        again = compiler.check(SLOW)  # not taken from a remembered verdict
    assert again.stopped == "batch_cancelled" and "before" in again.reason


def fresh() -> dict[str, Any]:
    """A schema no other test compiled (the compiler keeps its verdicts per schema)."""
    return {"type": "object", "properties": {f"p{uuid.uuid4().hex[:8]}": {"type": "integer"}}}


def job_allowance(store: JobStore, job_id: str, budget_s: float, waiting: bool = False) -> Allowance:
    return Allowance(budget_s, 5.0, lambda seconds: store.add_compile_seconds(job_id, seconds), lambda: waiting)


def test_the_shipped_grammar_budgets() -> None:
    shipped = Settings()
    assert (shipped.grammar_compile_timeout_s, shipped.grammar_compile_memory_mb) == (10.0, 2048)
    # Six schemas that each spend the whole per-schema budget (settings.py says why).
    assert shipped.grammar_job_budget_s == 60.0 == 6 * shipped.grammar_compile_timeout_s
    # A run yields after its first compile that spends the per-schema budget, or sooner.
    assert shipped.grammar_yield_after_s == 5.0 < shipped.grammar_compile_timeout_s


def test_at_the_shipped_job_budget_a_job_compiles_until_sixty_seconds_are_spent(
    compiler: Compiler, services: Services
) -> None:
    # tests/hostile/test_grammar.py lowers grammar_job_budget_s to 15 s for CI time; this
    # is the shipped 60 s, with the spending recorded in Redis as the shards record it.
    shipped = Settings()

    def allowance(job_id: str) -> Allowance:
        return Allowance(
            shipped.grammar_job_budget_s,
            shipped.grammar_yield_after_s,
            lambda seconds: services.jobs.add_compile_seconds(job_id, seconds),
            lambda: False,
        )

    nearly, spent = "batch_" + uuid.uuid4().hex, "batch_" + uuid.uuid4().hex
    services.jobs.add_compile_seconds(nearly, 59.0)
    services.jobs.add_compile_seconds(spent, 60.0)
    with allowed(allowance(nearly)):
        assert compiler.check(fresh()).ok  # 1 s left: an ordinary schema compiles in milliseconds
    with allowed(allowance(spent)):
        refused = compiler.check(fresh())
    assert (refused.ok, refused.stopped) == (False, JOB_CODE)
    assert refused.reason == "its job's grammar compile budget of 60 s (grammar_job_budget_s) is spent"


def test_a_jobs_compile_seconds_are_summed_in_redis_across_workers(services: Services, settings: Settings) -> None:
    mine, other = "batch_" + "a" * 32, "batch_" + "b" * 32
    # Another worker's store: its own connection to the same Redis database.
    elsewhere = JobStore(redis.Redis.from_url(settings.state_redis_url), settings.redis_prefix)
    assert services.jobs.add_compile_seconds(mine, 0) == 0.0  # reads; nothing spent yet
    assert services.jobs.add_compile_seconds(mine, 2.5) == 2.5
    assert elsewhere.add_compile_seconds(mine, 10.25) == 12.75  # the new total, both workers' seconds
    assert services.jobs.add_compile_seconds(mine, 0) == 12.75
    assert elsewhere.add_compile_seconds(other, 1.0) == 1.0  # each job its own


def test_once_a_jobs_budget_is_spent_new_schemas_fail_at_once_and_cached_verdicts_apply(
    compiler: Compiler, services: Services
) -> None:
    job_id = "batch_" + uuid.uuid4().hex
    known, new = fresh(), fresh()
    assert compiler.check(known).ok  # a verdict the worker keeps
    services.jobs.add_compile_seconds(job_id, 15.0)  # what the job's shards spent so far, anywhere
    with allowed(job_allowance(services.jobs, job_id, budget_s=15.0)):
        assert compiler.check(known).ok  # cached: costs the job nothing
        refused = compiler.check(new)
    assert (refused.ok, refused.stopped, refused.seconds) == (False, JOB_CODE, 0.0)  # no compile started
    assert refused.reason == "its job's grammar compile budget of 15 s (grammar_job_budget_s) is spent"
    assert services.jobs.add_compile_seconds(job_id, 0) == 15.0
    # Not a verdict on the schema: a job with budget left compiles it, and pays for it.
    other = "batch_" + uuid.uuid4().hex
    with allowed(job_allowance(services.jobs, other, budget_s=15.0)):
        assert compiler.check(new).ok
    assert 0 < services.jobs.add_compile_seconds(other, 0) < 15.0


def test_a_compile_is_cut_at_what_its_job_has_left(compiler: Compiler, services: Services) -> None:
    job_id = "batch_" + uuid.uuid4().hex
    services.jobs.add_compile_seconds(job_id, 14.0)
    slow = {**SLOW, "pattern": "(a|b|c|d|e){1,8999}"}
    with allowed(job_allowance(services.jobs, job_id, budget_s=15.0)):
        cut = compiler.check(slow)
    assert (cut.ok, cut.stopped) == (False, JOB_CODE)
    budget = "its job's grammar compile budget of 15 s (grammar_job_budget_s)"
    assert cut.reason == f"{budget} ran out while its grammar compiled"
    assert 1.0 <= cut.seconds < Budget().seconds  # cut at the 1 s left, not at the schema's own budget
    assert services.jobs.add_compile_seconds(job_id, 0) >= 15.0
    with interruptible(lambda: "batch_cancelled"):
        assert compiler.check(slow).stopped == "batch_cancelled"  # not kept: no verdict on the schema


def test_a_run_yields_before_a_compile_after_its_share_only_when_a_shard_waits(compiler: Compiler) -> None:
    waits = False
    spent: list[float] = []

    def spend(seconds: float) -> float:  # the job's total, kept here: this test is about the run
        spent.append(seconds)
        return sum(spent)

    # No job budget (0), and a share so small that every compile after the first is past it.
    allowance = Allowance(0.0, 1e-9, spend, lambda: waits)
    first, second, third = fresh(), fresh(), fresh()
    with allowed(allowance):
        waits = True
        assert compiler.check(first).ok  # each run compiles at least one schema, waiting or not
        waits = False
        assert compiler.check(second).ok  # past its share, but no shard waits: it goes on
        waits = True
        assert compiler.check(first).ok  # a kept verdict starts no compile: no reason to yield
        with pytest.raises(YieldWorker, match="another shard waits"):
            compiler.check(third)
    assert allowance.compiles == 2 and len(spent) == 2  # job budget 0: no limit, but still counted
    assert compiler.check(third).ok  # the next run compiles it
