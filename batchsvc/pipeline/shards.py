"""Run one shard on the warm engine.

The whole shard goes to the engine at once. As results finish, they are written
to storage in checkpoint parts (at least every `progress_every` requests, and
every `progress_interval_s`) and the shard's progress is published. A re-run
of the shard reads its parts back and sends only the requests not yet answered.

A worker that goes over its memory budget records, as it exits, which of the
shard's requests the engine held unanswered (MemoryExits). The next start sends
the others together as usual, then those suspects in groups of about the square
root of their number, checkpointed group by group; a worker going over its budget
while a group runs leaves the group's unanswered requests to run alone, one at a
time, and going over while one runs alone names it the culprit: the start after
that answers it `worker_memory_exceeded` and goes on. A vLLM engine takes a
whole shard at once, so for a shard of 1,024 that is three exits and 64 runs of
suspects (32 groups, then 32 alone), instead of 1,024 runs one by one; an engine
that takes one request at a time (the instant engine) leaves one suspect, found
in two exits.

A run that has compiled grammars for `grammar_yield_after_s` yields the worker
before its next compile when another shard waits: it checkpoints and raises
ShardInterrupted, the requests it had handed the engine are aborted, and the
next run (at the end of the queue) sends them again; its compiles count against
the job's `grammar_job_budget_s` (batchsvc/inference/grammar_budget.py).

When all are answered the parts are assembled, in input order, into the shard's
output object, and a summary is written; the summary is the small pointer the
shard task returns to the chord.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator

import orjson

from batchsvc import metrics
from batchsvc.inference import memory_budget, outputs
from batchsvc.inference.engine import Engine, EngineRequest, EngineResult, get_engine
from batchsvc.inference.grammar_budget import Allowance, YieldWorker, allowed, interruptible
from batchsvc.inference.models import ModelSpec
from batchsvc.inference.quality import Quality
from batchsvc.pipeline.lifecycle import StopReason, stop_reason
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound, Storage
from batchsvc.storage.manifest import Manifest, ShardSummary
from batchsvc.store.jobs import Counts, Job, MemoryExits

log = logging.getLogger(__name__)


class ShardInterrupted(Exception):
    """The worker is shutting down, or the shard yields it to a shard that waits:
    the shard stopped at a checkpoint it wrote, and its next run resumes from there."""


def _never() -> bool:
    return False


def _nothing() -> None:
    pass


def read_shard_requests(storage: Storage, job: layout.JobRef, index: int) -> list[EngineRequest]:
    requests = []
    with storage.open(layout.shard_input_key(job, index)) as stream:
        for raw in stream:
            if raw.strip():
                item = orjson.loads(raw)
                requests.append(EngineRequest(item["custom_id"], item["url"], item["body"], item.get("fingerprint")))
    return requests


def read_checkpoint(storage: Storage, job: layout.JobRef, index: int) -> tuple[dict[str, bytes], int]:
    """Lines already answered by earlier runs (custom_id -> output line), and the
    number of parts, so new parts never overwrite old ones."""
    done: dict[str, bytes] = {}
    parts = 0
    for info in storage.list(layout.shard_parts_prefix(job, index)):
        parts += 1
        with storage.open(info.key) as stream:
            for raw in stream:
                if raw.strip():
                    done[orjson.loads(raw)["custom_id"]] = raw.rstrip(b"\n")
    return done, parts


def result_line(job_id: str, model: str, request: EngineRequest, result: EngineResult) -> dict:
    if result.failure is not None or result.choices is None:
        failure = result.failure or outputs.RequestFailure("engine_error", "no output", 500)
        return outputs.rejected_line(job_id, request.custom_id, failure, result.attempts)
    body = outputs.completion_body(
        url=request.url,
        job_id=job_id,
        custom_id=request.custom_id,
        model=model,
        choices=result.choices,
        prompt_tokens=result.prompt_tokens,
        cached_tokens=result.cached_tokens,
    )
    line = outputs.success_line(job_id, request.custom_id, body, result.attempts)
    if request.fingerprint:
        line["fingerprint"] = request.fingerprint  # what a later job may reuse this answer by
    return line


class ShardRun:
    def __init__(self, svc: Services, job: Job, index: int, spec: ModelSpec):
        self.svc = svc
        self.storage = svc.storage
        self.job = job
        self.job_id = job.id
        self.index = index
        self.spec = spec
        self.model_name = job.model
        self.tally = outputs.Tally()
        self.done: dict[str, bytes] = {}
        self._buffer: list[bytes] = []
        self._next_part = 0
        self._last_flush = time.monotonic()
        self._stop: StopReason | None = None
        self.run_id = secrets.token_hex(4)
        self.engine_requests = 0  # sent to the engine by this run
        self.engine_seconds = 0.0  # time this run held the engine
        self.memory = MemoryExits()  # what earlier runs left when their worker went over its memory budget
        self._taken: list[str] = []  # custom_ids the engine has taken from this run, in order
        self._unit: list[str] | None = None  # the suspects the engine runs now, apart from the rest
        metrics.SHARD_ATTEMPTS.labels(spec.alias).inc()

    def _flush(self) -> None:
        if self._buffer:
            data = b"\n".join(self._buffer) + b"\n"
            self.storage.put_bytes(
                layout.shard_part_key(self.job, self.index, self._next_part, self.run_id), data, "application/jsonl"
            )
            self._next_part += 1
            self._buffer = []
            metrics.CHECKPOINT_WRITES.labels(self.spec.alias).inc()
        t = self.tally
        counts = Counts(t.succeeded, t.failed, t.prompt_tokens, t.completion_tokens)
        self.svc.jobs.record_shard_progress(self.job_id, self.index, counts)
        self._last_flush = time.monotonic()
        # A checkpoint is also where a running shard notices a cancel or an expiry.
        self._stop = stop_reason(self.svc.jobs.get(self.job_id))

    def _stop_code(self) -> str | None:
        """Why this shard must stop now, as an error code (a cancel, an expiry), if it must."""
        reason = stop_reason(self.svc.jobs.get(self.job_id))
        return reason.code if reason is not None else None

    def _accept_line(self, custom_id: str, line: dict, latency: float | None = None) -> None:
        raw = orjson.dumps(line)
        self.done[custom_id] = raw
        self._buffer.append(raw)
        self.tally.add(line, latency)
        metrics.request_answered(self.spec.alias, outputs.error_code(line), *outputs.usage_of(line), latency)
        settings = self.svc.settings
        if (
            len(self._buffer) >= settings.progress_every
            or time.monotonic() - self._last_flush >= settings.progress_interval_s
        ):
            self._flush()

    def execute(
        self,
        engine: Engine | None,
        give_up: str | None = None,
        *,
        progress: Callable[[], None] = _nothing,
        interrupted: Callable[[], bool] = _never,
        waiting: Callable[[], bool] = _never,
    ) -> ShardSummary:
        """Answer the requests the checkpoints do not hold yet: with `engine`, or,
        when `give_up` says why, as error lines, so the job can still finish.
        A cancel or an expiry seen at a checkpoint stops the engine the same way.
        `progress` is told of every result (the hung-engine watchdog); when
        `interrupted()` turns true, the shard writes its checkpoint and raises
        ShardInterrupted. So it does too, before a grammar compile, once this run
        has compiled for grammar_yield_after_s and `waiting()` says another shard
        waits for the worker."""
        started = time.monotonic()
        requests = read_shard_requests(self.storage, self.job, self.index)
        self.done, self._next_part = read_checkpoint(self.storage, self.job, self.index)
        for raw in self.done.values():
            self.tally.add(orjson.loads(raw))
        by_id = {r.custom_id: r for r in requests}
        self.memory = self.svc.jobs.memory_exits(self.job_id, self.index)
        self._answer_culprits(by_id)
        todo = [r for r in requests if r.custom_id not in self.done]
        if self.done:
            log.info("shard %s/%d resumes: %d done, %d to run", self.job_id, self.index, len(self.done), len(todo))
        self.svc.jobs.mark_started(self.job_id, time.time())

        reason = StopReason("shard_failed", give_up) if give_up else stop_reason(self.svc.jobs.get(self.job_id))
        if reason is None and engine is not None and todo:
            units = self._isolation_units(todo)
            isolated = {c for unit in units for c in unit}
            together = [r for r in todo if r.custom_id not in isolated]
            if units:
                log.info("shard %s/%d runs %d of its requests apart, in %d runs: the engine held them when a "
                         "worker went over its memory budget", self.job_id, self.index, len(isolated),
                         len(units))  # fmt: skip
            self.engine_requests = len(todo)
            engine_started = time.monotonic()
            progress()  # the watchdog's clock starts with the engine
            settings = self.svc.settings
            allowance = Allowance(
                settings.grammar_job_budget_s,
                settings.grammar_yield_after_s,
                spend=lambda seconds: self.svc.jobs.add_compile_seconds(self.job_id, seconds),
                waiting=waiting,
            )
            try:
                with memory_budget.exposed(self._over_budget), interruptible(self._stop_code), allowed(allowance):
                    if together:
                        reason = self._run_engine(engine, together, by_id, progress, interrupted)
                        self._flush()  # before the suspects: what they may cost is only themselves
                    for unit in units:
                        if reason is not None:
                            break
                        self._unit = unit
                        reason = self._run_engine(engine, [by_id[c] for c in unit], by_id, progress, interrupted)
                        self._unit = None
                        self._flush()  # each unit is checkpointed before the next one runs
                        reason = reason or self._stop
            finally:
                self.engine_seconds = time.monotonic() - engine_started
        if reason is not None:
            for request in requests:
                if request.custom_id not in self.done:
                    line = outputs.not_run_line(self.job_id, request.custom_id, reason.code, reason.message)
                    self._accept_line(request.custom_id, line)
        self._flush()
        summary = self._assemble(requests)
        metrics.SHARD_DURATION.labels(self.spec.alias).observe(time.monotonic() - started)
        return summary

    def _isolation_units(self, todo: list[EngineRequest]) -> list[list[str]]:
        """The runs of suspects, apart from the shard's other requests: each to run
        alone, one at a time, then the other suspects in groups of ~sqrt(their number)."""
        waiting = {r.custom_id for r in todo}
        alone = [[c] for c in self.memory.alone if c in waiting]
        suspects = [c for c in self.memory.suspects if c in waiting and c not in self.memory.alone]
        size = max(1, math.isqrt(len(suspects) - 1) + 1) if suspects else 1
        return alone + [suspects[i : i + size] for i in range(0, len(suspects), size)]

    def _taking(self, requests: list[EngineRequest]) -> Iterator[EngineRequest]:
        """`requests`, noting each as the engine takes it: what the engine has not
        taken yet cannot be what took its worker's memory."""
        for request in requests:
            self._taken.append(request.custom_id)
            yield request

    def _run_engine(
        self,
        engine: Engine,
        requests: list[EngineRequest],
        by_id: dict[str, EngineRequest],
        progress: Callable[[], None],
        interrupted: Callable[[], bool],
    ) -> StopReason | None:
        """Answer `requests` with the engine; the reason it stopped early, if it did."""
        results = engine.run(self._taking(requests))
        try:
            for result in results:
                progress()
                request = by_id[result.custom_id]
                line = result_line(self.job_id, self.model_name, request, result)
                self._accept_line(request.custom_id, line, result.latency_s)
                if interrupted():
                    self._flush()
                    log.info("shard %s/%d interrupted at %d done; checkpoint written",
                             self.job_id, self.index, len(self.done))  # fmt: skip
                    raise ShardInterrupted(f"{self.job_id}/{self.index}")
                if self._stop is not None:
                    return self._stop
        except YieldWorker as exc:  # raised before a compile, out of the engine, which aborted what it held
            self._flush()
            log.info("shard %s/%d yields the worker at %d done (%s); checkpoint written, back to the queue",
                     self.job_id, self.index, len(self.done), exc)  # fmt: skip
            raise ShardInterrupted(f"{self.job_id}/{self.index}") from None
        finally:
            results.close()  # aborts what the engine still holds of this shard
        return None

    def _over_budget(self, rss_mb: float, budget_mb: int) -> memory_budget.Recorded:
        """The worker is over its memory budget and about to exit (called from the
        memory watch's thread): record what the engine held, so the next start knows."""
        in_flight = [c for c in list(self._taken) if c not in self.done]
        unit = self._unit
        after = self.memory.after_exit(in_flight, unit, rss_mb, budget_mb)
        narrows = after.narrows(self.memory)
        self.svc.jobs.record_memory_exit(self.job_id, self.index, after, refund=narrows)
        where = f"shard {self.job_id}/{self.index}"
        if unit is not None and len(unit) == 1 and unit[0] in after.culprits:
            return memory_budget.Recorded(
                f"{where}: request {unit[0]} ran alone, and fails as {memory_budget.CODE}", True
            )
        counted = "" if narrows else " (nothing new: this start counts against shard_max_attempts)"
        held = f"{len(in_flight)} request{'' if len(in_flight) == 1 else 's'} in flight"
        then = "each to run alone" if unit is not None else "to run apart from the others, in small groups"
        return memory_budget.Recorded(f"{where}: {held}, {then} at the next start{counted}", narrows)

    def _answer_culprits(self, by_id: dict[str, EngineRequest]) -> None:
        """Answer the requests that took a worker over its budget while they ran alone."""
        for custom_id, rss_mb in self.memory.culprits.items():
            if custom_id in by_id and custom_id not in self.done:
                failure = outputs.RequestFailure(
                    memory_budget.CODE,
                    f"this request, run alone, took the LLM worker to {rss_mb:.0f} MB of memory, over its budget "
                    f"of {self.memory.budget_mb} MB (worker_max_rss_mb); the worker was restarted and the "
                    "request was not run again",
                    400,
                )
                self._accept_line(custom_id, outputs.rejected_line(self.job_id, custom_id, failure))

    def _assemble(self, requests: list[EngineRequest]) -> ShardSummary:
        output_key = layout.shard_output_key(self.job, self.index, self.run_id)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(prefix="batchsvc-shard-") as tmp:
            for request in requests:
                raw = self.done[request.custom_id] + b"\n"
                digest.update(raw)
                tmp.write(raw)
            tmp.flush()
            self.storage.put_file(output_key, tmp.name, "application/jsonl")
        quality = Quality()
        for request in requests:
            line = orjson.loads(self.done[request.custom_id])
            quality.add(request.body, request.url, line, self.svc.settings.answer_field)
        summary = ShardSummary(
            job_id=self.job_id,
            index=self.index,
            output_key=output_key,
            count=len(requests),
            succeeded=self.tally.succeeded,
            failed=self.tally.failed,
            prompt_tokens=self.tally.prompt_tokens,
            completion_tokens=self.tally.completion_tokens,
            cached_tokens=self.tally.cached_tokens,
            reused=self.tally.reused,
            engine_requests=self.engine_requests,
            engine_seconds=round(self.engine_seconds, 6),
            latency_sum=round(self.tally.latency_sum, 6),
            latency_count=self.tally.latency_count,
            sha256=digest.hexdigest(),
            tenant=self.job.tenant,
            schema_checked=quality.schema_checked,
            schema_valid=quality.schema_valid,
            answers=quality.answers,
        )
        if not summary.save_if_absent(self.storage):
            # A duplicate run of this shard finished first (conditional create):
            # its summary and output are the shard's; drop ours.
            self.storage.delete(output_key)
            return ShardSummary.load(self.storage, self.job, self.index)
        self.storage.delete_prefix(layout.shard_parts_prefix(self.job, self.index))
        return summary


def finished_shard(storage: Storage, job: layout.JobRef, index: int) -> ShardSummary | None:
    """The summary of a shard that is done, or None."""
    try:
        return ShardSummary.load(storage, job, index)
    except ObjectNotFound:
        return None


def _shard_run(svc: Services, job_id: str, index: int) -> ShardRun | ShardSummary:
    job = svc.jobs.get(job_id)
    try:
        return ShardSummary.load(svc.storage, job, index)
    except ObjectNotFound:
        pass
    spec = svc.models.get(job.model)
    if spec is None:
        raise LookupError(f"model {job.model!r} of job {job_id} is not in the catalogue")
    return ShardRun(svc, job, index, spec)


def run_shard(
    svc: Services,
    job_id: str,
    index: int,
    engine_for: Callable[[ModelSpec], Engine] = get_engine,
    *,
    progress: Callable[[], None] = _nothing,
    interrupted: Callable[[], bool] = _never,
    waiting: Callable[[], bool] = _never,
) -> ShardSummary:
    """Run a shard to completion, or return the summary of an earlier finished run
    (see ShardRun.execute for `progress`, `interrupted` and `waiting`)."""
    run = _shard_run(svc, job_id, index)
    if isinstance(run, ShardSummary):
        return run
    return run.execute(engine_for(run.spec), progress=progress, interrupted=interrupted, waiting=waiting)


def finish_reused_shards(svc: Services, manifest: Manifest) -> list[int]:
    """Assemble here the shards whose every request was answered from an earlier
    job (they need no engine); return the indexes of the shards that do."""
    for info in manifest.shards:
        if not info.needs_engine:
            run = _shard_run(svc, manifest.job_id, info.index)
            if isinstance(run, ShardRun):
                run.execute(None)
    return [info.index for info in manifest.shards if info.needs_engine]


def give_up_shard(svc: Services, job_id: str, index: int, reason: str | None) -> ShardSummary:
    """Finish a shard that cannot run: keep what its checkpoints hold and turn the
    rest into error lines, so every request still appears once in the results.
    `reason` None answers with the job's own stop reason (cancelled, expired)."""
    run = _shard_run(svc, job_id, index)
    if isinstance(run, ShardSummary):
        return run
    return run.execute(None, give_up=reason)


def iter_lines(storage: Storage, key: str) -> Iterator[bytes]:
    with storage.open(key) as stream:
        for raw in stream:
            if raw.strip():
                yield raw.rstrip(b"\n")
