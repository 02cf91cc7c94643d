"""Prepare a job: fetch its input if it is a URL, validate it in one streaming
pass, and cut it into shards in storage in the same pass."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import orjson

from batchsvc.errors import ServiceError
from batchsvc.inference import outputs
from batchsvc.inference.fingerprint import request_fingerprint
from batchsvc.inference.models import ModelSpec
from batchsvc.inference.provenance import reproducibility_record
from batchsvc.inference.validation import DEFAULT_SUPPORTED_URLS, BatchRequest, BatchValidator
from batchsvc.outbound.fetch import FetchError, fetch_input
from batchsvc.pipeline.reuse import reuse_index
from batchsvc.pipeline.shards import give_up_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound, Storage
from batchsvc.storage.manifest import Manifest, ShardInfo
from batchsvc.store.jobs import Job, JobStatus, job_error
from batchsvc.store.tenants import check_queued_requests

log = logging.getLogger(__name__)

REUSED_PART = "reused"  # the run name of the checkpoint part that holds a shard's reused answers


class ShardWriter:
    """Collects valid request lines into shard files of `shard_size` lines and
    uploads each one as soon as it is full, so only one shard sits on local disk.

    Each line gets its fingerprint. A request answered from an earlier job is in
    its shard too (so the shard's output keeps input order), and its answer goes
    into the shard's first checkpoint part: the shard run takes it as done and
    never sends it to the engine."""

    def __init__(self, storage: Storage, job: Job, shard_size: int, workdir: Path):
        self.storage = storage
        self.job = job
        self.shard_size = shard_size
        self.workdir = workdir
        self.shards: list[ShardInfo] = []
        self._fh: BinaryIO | None = None
        self._reused: list[bytes] = []
        self._count = 0
        self._first_line = 0

    def add(self, request: BatchRequest, fingerprint: str, reused: dict | None = None) -> None:
        if self._fh is None:
            self._fh = (self.workdir / "shard.jsonl").open("wb")
            self._count = 0
            self._first_line = request.line
        line = {"custom_id": request.custom_id, "url": request.url, "body": request.body, "fingerprint": fingerprint}
        self._fh.write(orjson.dumps(line))
        self._fh.write(b"\n")
        if reused is not None:
            self._reused.append(orjson.dumps(reused))
        self._count += 1
        if self._count >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        index = len(self.shards)
        self.storage.put_file(
            layout.shard_input_key(self.job, index), self.workdir / "shard.jsonl", "application/jsonl"
        )
        if self._reused:
            key = layout.shard_part_key(self.job, index, 0, REUSED_PART)
            self.storage.put_bytes(key, b"\n".join(self._reused) + b"\n", "application/jsonl")
        self.shards.append(
            ShardInfo(index=index, count=self._count, first_line=self._first_line, reused=len(self._reused))
        )
        self._fh = None
        self._reused = []

    def close(self) -> list[ShardInfo]:
        self._flush()
        return self.shards

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for shard in self.shards:
            self.storage.delete(layout.shard_input_key(self.job, shard.index))
            self.storage.delete_prefix(layout.shard_parts_prefix(self.job, shard.index))
        self.shards = []


UNPREPARED = frozenset({JobStatus.QUEUED, JobStatus.VALIDATING, JobStatus.CANCELLING})


def unprepared(job: Job) -> bool:
    """Whether prepare still has to run: the job never went in_progress. A job
    cancelled before then is prepared too: its requests must be known to be
    answered batch_cancelled."""
    return job.status in UNPREPARED and job.in_progress_at is None


def batch_validator(settings: Settings, spec: ModelSpec, endpoint: str | None) -> BatchValidator:
    """The validation a job's input gets (and a dry run's, the same)."""
    return BatchValidator(
        model_names=spec.names,
        supported_urls={endpoint} if endpoint else DEFAULT_SUPPORTED_URLS,
        max_file_bytes=settings.max_file_bytes,
        max_lines=settings.max_lines,
        max_line_bytes=settings.max_line_bytes,
        max_tokens_cap=spec.max_tokens_cap,
        max_errors=settings.max_errors_reported,
    )


def fail_job(svc: Services, job_id: str, errors: list[dict], error_count: int) -> None:
    if svc.jobs.fail(job_id, errors, error_count, expect=UNPREPARED):
        log.info("job %s failed validation with %d error(s)", job_id, error_count)


def _within_quota(svc: Services, job: Job, requests: int) -> bool:
    """A fetched file's size was unknown at submit: check the tenant's queued-request
    quota now, failing the job (nothing run) if it would pass it."""
    others = [j for j in svc.jobs.active_jobs(job.tenant) if j.id != job.id]
    try:
        check_queued_requests(svc.tenants.get(job.tenant), svc.settings, svc.jobs, others, requests)
    except ServiceError as exc:
        fail_job(svc, job.id, [job_error("quota_exceeded", exc.message, "input_file_url")], 1)
        return False
    return True


def prepare_job(svc: Services, job_id: str) -> Manifest | None:
    """Validate and shard a queued job. Returns the manifest, or None when the job
    failed validation (or was already prepared by an earlier delivery)."""
    settings = svc.settings
    job = svc.jobs.get(job_id)
    if not unprepared(job):
        log.info("job %s is %s; prepare has nothing to do", job_id, job.status.value)
        return None
    svc.jobs.transition(
        job_id, JobStatus.VALIDATING, expect={JobStatus.QUEUED, JobStatus.VALIDATING}, validating_at=time.time()
    )

    spec = svc.models.get(job.model)
    if spec is None:
        fail_job(svc, job_id, [job_error("unknown_model", f"model {job.model!r} is not served here", "model")], 1)
        return None

    input_key = job.input_key
    if input_key is None:
        input_key = layout.input_key(job)
        try:
            fetch_input(settings, job.input_url or "", svc.storage, input_key)
        except FetchError as exc:
            fail_job(svc, job_id, [job_error("fetch_failed", str(exc), "input_file_url")], 1)
            return None
        svc.jobs.update(job_id, input_key=input_key)

    validator = batch_validator(settings, spec, job.endpoint)
    try:
        source = svc.storage.open(input_key)
    except ObjectNotFound:
        message = f"the input file {job.input_file_id or input_key!r} no longer exists"
        fail_job(svc, job_id, [job_error("input_missing", message, "input_file_id")], 1)
        return None
    record = reproducibility_record(spec)
    with (
        tempfile.TemporaryDirectory(prefix="batchsvc-prepare-") as workdir,
        source as stream,
        reuse_index(svc, job.tenant, job.reuse_from or []) as reusable,
    ):
        writer = ShardWriter(svc.storage, job, settings.shard_size, Path(workdir))
        for request in validator.iter_valid(stream):
            # Keep validating after the first error, to report up to N of them,
            # but stop writing shards: nothing of a bad file is ever run.
            if validator.report.error_count == 0:
                fingerprint = request_fingerprint(spec, record["weights"], request.url, request.body)
                found = reusable.answer(fingerprint)
                reused = None
                if found is not None:
                    reused = outputs.reused_line(job_id, request.custom_id, found[1], found[0])
                writer.add(request, fingerprint, reused)
        report = validator.report
        if not report.ok:
            writer.discard()
            fail_job(svc, job_id, [e.to_dict() for e in report.errors], report.error_count)
            return None
        shards = writer.close()

    if job.input_url is not None and not _within_quota(svc, job, report.valid):
        writer.discard()
        return None
    manifest = Manifest(
        job_id=job_id, model=job.model, total=report.valid, shards=shards, tenant=job.tenant, reproducibility=record
    )
    manifest.save(svc.storage)
    svc.jobs.update(job_id, total=manifest.total, shard_count=len(shards), reproducibility=record)
    reused_count = sum(s.reused for s in shards)
    log.info("job %s: %d requests (%d reused) in %d shard(s)", job_id, manifest.total, reused_count, len(shards))
    return manifest


def answer_unstarted(svc: Services, manifest: Manifest) -> None:
    """Answer every request of a job that stopped before its shards were sent
    (cancelled while queued or validating) with the error line saying why, here
    on the cpu worker; finalize then publishes them like any shard's."""
    for shard in manifest.shards:
        give_up_shard(svc, manifest.job_id, shard.index, None)
