"""A time and memory budget for grammar compilation.

Before the LLM worker hands vLLM a request with a JSON schema, the schema is
compiled the way vLLM's xgrammar backend compiles it, in a child process the
worker watches: past `seconds` or past `memory_mb` of resident memory the child
is killed, and the request fails alone (`grammar_budget_exceeded`) instead of
taking the worker's memory, or its time, from every other request. A schema
that compiled within the budget costs the engine the same again, so the engine's
own compile of it is bounded too. Verdicts are kept per schema, so a shard of
many requests with one schema pays for one check.

A shard also gives its compiles an Allowance (`allowed`): its job may spend so
many compile seconds in all, across its shards and workers, after which the
job's further uncached schemas fail at once (`job_grammar_budget_exceeded`;
a compile that would outlast what is left is cut there), and one run of the
shard that has compiled for long enough yields the worker to a shard waiting
behind it (YieldWorker) before it starts another compile.

The child is started once and kept (a compile costs only the compile); it is
started again after it was killed. Run as a module it is that child.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import resource
import select
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger(__name__)

CODE = "grammar_budget_exceeded"
JOB_CODE = "job_grammar_budget_exceeded"
_READY, _OK = b"ready\n", b"ok\n"
_PAGE = os.sysconf("SC_PAGE_SIZE")
# xgrammar prefixes its messages with a time and its own source location.
_COMPILER_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


@dataclass(frozen=True)
class Budget:
    seconds: float = 10.0
    memory_mb: int = 2048  # resident memory of the compiling child, its tokenizer included


class GrammarRefused(ValueError):
    """A schema the compiler refused, or that broke the budget; the request fails
    alone. `code` is the line's error code (the stop's own when a stop cut it short)."""

    def __init__(self, message: str, code: str = CODE):
        super().__init__(message)
        self.code = code


# What the shard running now says when its requests must stop (a cancel, an
# expiry): the error code, or None. A compile is interrupted when it says so.
_stop: ContextVar[Callable[[], str | None] | None] = ContextVar("grammar_stop", default=None)


@contextmanager
def interruptible(stop: Callable[[], str | None]) -> Iterator[None]:
    """Let `stop` interrupt the compiles that run inside this block."""
    token = _stop.set(stop)
    try:
        yield
    finally:
        _stop.reset(token)


class YieldWorker(Exception):
    """The shard running now has compiled for its share of the worker and another
    shard waits: it stops before its next compile and goes back to its queue."""


@dataclass
class Allowance:
    """The compile time the shard running now may spend. Its job may spend
    `job_budget_s` in all (0: no limit): `spend(seconds)` adds to the job's total,
    wherever its shards run, and returns the new total (`spend(0)` reads it). One
    run of the shard yields the worker once it has compiled for `yield_after_s`
    (0: never) and `waiting()` says another shard waits, before its next compile:
    so each run compiles at least one schema, and the job makes progress."""

    job_budget_s: float
    yield_after_s: float
    spend: Callable[[float], float]
    waiting: Callable[[], bool]
    run_s: float = 0.0  # compile seconds of this run
    compiles: int = 0  # compiles this run started
    job_s: float | None = None  # the job's total, as of this run's last spend

    def left(self) -> float:
        """Compile seconds the job has left (inf without a job budget)."""
        if self.job_budget_s <= 0:
            return float("inf")
        if self.job_s is None:
            self.job_s = self.spend(0.0)
        return self.job_budget_s - self.job_s

    def must_yield(self) -> bool:
        return 0 < self.yield_after_s <= self.run_s and self.compiles > 0 and self.waiting()

    def spent(self, seconds: float) -> None:
        self.run_s += seconds
        self.compiles += 1
        self.job_s = self.spend(seconds)

    def refusal(self, while_compiling: bool) -> str:
        budget = f"its job's grammar compile budget of {self.job_budget_s:g} s (grammar_job_budget_s)"
        return f"{budget} ran out while its grammar compiled" if while_compiling else f"{budget} is spent"


_allowance: ContextVar[Allowance | None] = ContextVar("grammar_allowance", default=None)


@contextmanager
def allowed(allowance: Allowance) -> Iterator[None]:
    """Account the compiles that run inside this block to `allowance`."""
    token = _allowance.set(allowance)
    try:
        yield
    finally:
        _allowance.reset(token)


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    peak_mb: float = 0.0
    # Set when what ended the compile was no verdict on the schema, and then not kept:
    # the code of a stop that interrupted it, or JOB_CODE when its job's budget ran out.
    stopped: str | None = None


class Compiler:
    """The watched child that compiles schemas for one tokenizer."""

    def __init__(self, tokenizer: str, any_whitespace: bool, budget: Budget):
        self.tokenizer = tokenizer
        self.any_whitespace = any_whitespace
        self.budget = budget
        self._child: subprocess.Popen[bytes] | None = None
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()

    def check(self, schema: Any) -> Verdict:
        data = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        key = hashlib.sha256(data).hexdigest()
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            return self._verdicts[key]
        allowance = _allowance.get()
        seconds, cut = self.budget.seconds, None
        if allowance is not None:
            left = allowance.left()
            if left <= 0:
                return Verdict(False, allowance.refusal(while_compiling=False), stopped=JOB_CODE)
            if allowance.must_yield():
                raise YieldWorker(f"compiled for {allowance.run_s:.1f} s in this run, and another shard waits")
            if left < seconds:
                seconds, cut = left, allowance.refusal(while_compiling=True)
        verdict = self._compile(data, seconds, cut)
        if allowance is not None and verdict is not None:
            allowance.spent(verdict.seconds)
        if verdict is not None and verdict.stopped is None:  # None: the child could not start
            self._verdicts[key] = verdict
            while len(self._verdicts) > 1024:
                self._verdicts.popitem(last=False)
        return verdict or Verdict(ok=True, reason="not checked")

    def _start(self) -> subprocess.Popen[bytes] | None:
        cap = (self.budget.memory_mb + 4096) * 1024 * 1024  # a hard stop behind the RSS watch

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        child = subprocess.Popen(
            [sys.executable, "-m", __name__, self.tokenizer, "1" if self.any_whitespace else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=limit,
        )
        assert child.stdout is not None
        deadline = time.monotonic() + 120
        line = b""
        while line != _READY:  # libraries may print to stdout while they load: skip that
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = child.stdout.readline() if ready else b""
            if not line:
                break
        if line != _READY:
            log.warning("grammar budget: the compiler child did not start; schemas go unchecked")
            self._kill(child)
            return None
        return child

    def _compile(self, data: bytes, seconds: float, cut: str | None) -> Verdict | None:
        """Compile within `seconds`; past them, `cut` is the reason, when they are
        less than the budget's (what the job had left), and the verdict is not kept."""
        if self._child is None or self._child.poll() is not None:
            self._child = self._start()
            if self._child is None:
                return None
        child = self._child
        assert child.stdin is not None and child.stdout is not None
        stop = _stop.get()
        if stop is not None and (code := stop()) is not None:  # stopped already: no compile starts
            return Verdict(False, "the batch stopped before its grammar compiled", stopped=code)
        child.stdin.write(data + b"\n")
        child.stdin.flush()
        started = time.monotonic()
        peak = 0.0
        asked = started
        while True:
            ready, _, _ = select.select([child.stdout], [], [], 0.05)
            elapsed = time.monotonic() - started
            if ready:
                answer = child.stdout.readline()
                if answer == _OK:
                    return Verdict(ok=True, seconds=elapsed, peak_mb=max(peak, _rss_mb(child.pid)))
                if not answer:  # died: the hard memory cap, or a crash in the compiler
                    self._child = None
                    return Verdict(False, "compiling its grammar crashed the compiler", elapsed, peak)
                reason = _COMPILER_LOCATION.sub("", answer.decode(errors="replace").strip().removeprefix("refused "))
                return Verdict(False, f"its grammar cannot be compiled: {reason[:200]}", elapsed, peak)
            peak = max(peak, _rss_mb(child.pid))
            if peak > self.budget.memory_mb:
                self._kill(child)
                return Verdict(False, f"compiling its grammar took more than {self.budget.memory_mb} MB", elapsed, peak)
            if elapsed > seconds:
                self._kill(child)
                if cut is not None:
                    return Verdict(False, cut, elapsed, peak, JOB_CODE)
                return Verdict(
                    False, f"compiling its grammar took longer than {self.budget.seconds:g} s", elapsed, peak
                )
            if stop is not None and time.monotonic() - asked >= 0.5:
                asked = time.monotonic()
                code = stop()
                if code is not None:  # not a verdict on the schema: nothing is kept
                    self._kill(child)
                    return Verdict(False, "the batch stopped while its grammar compiled", elapsed, peak, code)

    def _kill(self, child: subprocess.Popen[bytes]) -> None:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):  # or each kill leaks two descriptors
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if child is self._child:
            self._child = None

    def close(self) -> None:
        if self._child is not None:
            self._kill(self._child)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _serve(tokenizer: str, any_whitespace: bool) -> None:
    """The child: one schema per stdin line, one answer per stdout line."""
    import xgrammar
    from transformers import AutoTokenizer

    info = xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(tokenizer))
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    out = sys.stdout.buffer
    out.write(_READY)
    out.flush()
    for line in sys.stdin.buffer:
        try:
            compiler.compile_json_schema(line.decode(), any_whitespace=any_whitespace)
        except Exception as exc:  # the compiler's own refusal (an unsupported keyword, ...)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            out.write(b"refused " + message.encode(errors="replace")[:300] + b"\n")
        else:
            out.write(_OK)
        out.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2] == "1")
