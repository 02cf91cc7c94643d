"""The grammar compile budget's own rules, on the real compiler child (xgrammar
with the tiny model's tokenizer): a stop interrupts a compile, a stop that came
first starts none, and neither is remembered as a verdict on the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchsvc.inference.grammar_budget import Budget, Compiler, interruptible

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
