"""Finalize a job: merge shard outputs in input order into one results file and
one errors file, upload both (multipart), record stats, and mark the job done."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchsvc import metrics
from batchsvc.inference import outputs
from batchsvc.inference.quality import Quality
from batchsvc.pipeline.costs import cost_of
from batchsvc.pipeline.lifecycle import EXPIRED_CODE, FAILED_CODE, final_status
from batchsvc.pipeline.partial import shard_lines
from batchsvc.pipeline.recovery import save_job_record
from batchsvc.pipeline.shards import iter_lines, read_shard_requests
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound, Storage
from batchsvc.storage.manifest import Manifest, ShardSummary
from batchsvc.store.files import FileRecord, derived_file_id
from batchsvc.store.jobs import Job, JobStatus

log = logging.getLogger(__name__)

FAILED_MESSAGE = "the batch failed before this request was answered"


@dataclass
class MergeStats(outputs.Tally):
    expired: int = 0  # requests that never ran because the completion window ended
    engine_requests: int = 0  # sent to the engine, summed over shards
    engine_seconds: float = 0.0  # time the shards held the engine, summed
    quality: Quality = field(default_factory=Quality)
    answer_field: str = ""

    def to_dict(self) -> dict[str, Any]:
        avg = round(self.latency_sum / self.latency_count, 4) if self.latency_count else None
        return {
            "total": self.total,
            "successful": self.succeeded,
            "failed": self.failed,
            "avg_response_time": avg,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reused": self.reused,
            "engine_requests": self.engine_requests,
            "engine_seconds": round(self.engine_seconds, 3),
            "quality": self.quality.to_dict(self.answer_field),
        }


def merge_outputs(
    storage: Storage, manifest: Manifest, results_path: Path, errors_path: Path, answer_field: str = ""
) -> MergeStats:
    """Stream every shard's output, in shard order, into the two local files."""
    stats = MergeStats(answer_field=answer_field)
    with results_path.open("wb") as results, errors_path.open("wb") as errors:
        for shard in manifest.shards:
            summary = ShardSummary.load(storage, manifest, shard.index)
            # Latencies live in the summaries, not the lines.
            stats.latency_sum += summary.latency_sum
            stats.latency_count += summary.latency_count
            stats.engine_requests += summary.engine_requests
            stats.engine_seconds += summary.engine_seconds
            stats.quality.merge(Quality(summary.schema_checked, summary.schema_valid, summary.answers))
            for raw in iter_lines(storage, summary.output_key):
                line = orjson.loads(raw)
                if stats.add(line):
                    results.write(raw + b"\n")
                else:
                    if (line.get("error") or {}).get("code") == EXPIRED_CODE:
                        stats.expired += 1
                    errors.write(raw + b"\n")
    return stats


def finalize_job(svc: Services, job_id: str) -> Job:
    """Merge and publish a job's results, and end it completed, cancelled or
    expired. Safe to run again: the keys are fixed, only one run moves the job
    to its terminal status, and a job already ended is returned as it is."""
    job = svc.jobs.get(job_id)
    if job.status.terminal:
        return job
    # A cancelling job stays "cancelling" while it merges: the status it ends in
    # depends on it.
    if job.status is not JobStatus.CANCELLING and not svc.jobs.transition(
        job_id,
        JobStatus.FINALIZING,
        expect={JobStatus.IN_PROGRESS, JobStatus.FINALIZING},
        finalizing_at=time.time(),
    ):
        log.warning("job %s is %s; not finalizing it", job_id, svc.jobs.get(job_id).status.value)
        return svc.jobs.get(job_id)
    was = job.status
    manifest = Manifest.load(svc.storage, job)
    with tempfile.TemporaryDirectory(prefix="batchsvc-finalize-") as workdir:
        results_path, errors_path = Path(workdir) / "results.jsonl", Path(workdir) / "errors.jsonl"
        stats = merge_outputs(svc.storage, manifest, results_path, errors_path, svc.settings.answer_field)
        if stats.total != manifest.total:
            raise RuntimeError(f"job {job_id}: merged {stats.total} lines, manifest has {manifest.total}")
        results = svc.storage.put_file(layout.results_key(job), results_path, "application/jsonl")
        errors = svc.storage.put_file(layout.errors_key(job), errors_path, "application/jsonl")

    output_file = _register(svc, job, "output", layout.results_key(job), results.size)
    error_file = _register(svc, job, "error", layout.errors_key(job), errors.size)
    now = time.time()
    # Only one of two concurrent finalizers moves the job; both wrote identical objects.
    moved = svc.jobs.transition(
        job_id,
        final_status(was, stats.expired),
        expect={JobStatus.FINALIZING, JobStatus.CANCELLING},
        finished_at=now,
        stats={**stats.to_dict(), "cost": cost_of(stats.engine_seconds, svc.models.get(job.model))},
        results_key=layout.results_key(job),
        errors_key=layout.errors_key(job),
        output_file_id=output_file.id,
        error_file_id=error_file.id,
        estimated_completion=None,
    )
    if moved:  # counted once, by the finalizer that ended the job
        q = stats.quality
        metrics.record_quality(job.model, stats.answer_field, q.schema_checked, q.schema_valid, q.answers)
    save_job_record(svc, job_id)
    job = svc.jobs.get(job_id)
    # The rate estimates are made from: requests the engine ran (reused ones take no time).
    ran = stats.engine_requests
    if job.status is JobStatus.COMPLETED and job.started_at is not None and now > job.started_at and ran:
        svc.jobs.record_model_rate(job.model, ran / (now - job.started_at))
    log.info("job %s %s: %s", job_id, job.status.value, stats.to_dict())
    return job


def fail_job(svc: Services, job_id: str, error: dict[str, Any]) -> Job:
    """End a job failed, accounting for every request it was given.

    A job that failed before it was sharded has no known requests: it ends with
    `error` alone. One that failed later (finalize or prepare failing for good)
    first ends failed, so that its running shards stop (`batch_failed`), and then
    publishes what it has: each request once, its finished line if one survives
    (a shard's output or checkpoint), else an error line `batch_failed`. If even
    that cannot be written, the job stays failed, with `error`, and no files."""
    job = svc.jobs.get(job_id)
    if not svc.jobs.fail(job_id, [error]):
        return svc.jobs.get(job_id)  # it ended meanwhile, by another way
    try:
        manifest = Manifest.load(svc.storage, job)
    except ObjectNotFound:
        return svc.jobs.get(job_id)
    try:
        _publish_failed(svc, job, manifest)
    except Exception as exc:  # the job is failed already; only its files are missing
        log.error("job %s failed, and its requests could not be published: %r", job_id, exc)
    return svc.jobs.get(job_id)


def _publish_failed(svc: Services, job: Job, manifest: Manifest) -> None:
    stats = MergeStats(answer_field=svc.settings.answer_field)
    with tempfile.TemporaryDirectory(prefix="batchsvc-fail-") as workdir:
        results_path, errors_path = Path(workdir) / "results.jsonl", Path(workdir) / "errors.jsonl"
        with results_path.open("wb") as results, errors_path.open("wb") as errors:
            for shard in manifest.shards:
                finished: dict[str, bytes] = {}
                try:
                    for raw in shard_lines(svc.storage, job, shard.index):
                        finished[orjson.loads(raw)["custom_id"]] = raw
                except ObjectNotFound:
                    pass  # this shard's answers are gone: its requests are answered below
                for request in read_shard_requests(svc.storage, job, shard.index):
                    line = finished.get(request.custom_id) or orjson.dumps(
                        outputs.not_run_line(job.id, request.custom_id, FAILED_CODE, FAILED_MESSAGE)
                    )
                    (results if stats.add(orjson.loads(line)) else errors).write(line + b"\n")
        result_object = svc.storage.put_file(layout.results_key(job), results_path, "application/jsonl")
        error_object = svc.storage.put_file(layout.errors_key(job), errors_path, "application/jsonl")
    svc.jobs.update(
        job.id,
        stats=stats.to_dict(),
        results_key=layout.results_key(job),
        errors_key=layout.errors_key(job),
        output_file_id=_register(svc, job, "output", layout.results_key(job), result_object.size).id,
        error_file_id=_register(svc, job, "error", layout.errors_key(job), error_object.size).id,
    )
    save_job_record(svc, job.id)
    log.info("job %s failed; its %d requests published: %s", job.id, stats.total, stats.to_dict())


def _register(svc: Services, job: Job, kind: str, key: str, size: int) -> FileRecord:
    """The output and error files are file objects too (OpenAI Files API)."""
    record = FileRecord(
        id=derived_file_id(job.id, kind),
        filename=f"{job.id}_{kind}.jsonl",
        purpose="batch_output",
        size=size,
        key=key,
        job_id=job.id,
        tenant=job.tenant,
    )
    return svc.files.save(record)
