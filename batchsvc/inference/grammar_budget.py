"""A time and memory budget for grammar compilation.

Before the LLM worker hands vLLM a request with a JSON schema, the schema is
compiled the way vLLM's xgrammar backend compiles it, in a child process the
worker watches: past `seconds` or past `memory_mb` of resident memory the child
is killed, and the request fails alone (`grammar_budget_exceeded`) instead of
taking the worker's memory, or its time, from every other request. A schema
that compiled within the budget costs the engine the same again, so the engine's
own compile of it is bounded too. Verdicts are kept per schema, so a shard of
many requests with one schema pays for one check.

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


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    peak_mb: float = 0.0
    stopped: str | None = None  # the stop's code, when a stop interrupted the compile


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
        verdict = self._compile(data)
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

    def _compile(self, data: bytes) -> Verdict | None:
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
            if elapsed > self.budget.seconds:
                self._kill(child)
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
