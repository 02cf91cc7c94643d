"""Reuse: answer a request from an earlier job of the same tenant whose request
had the same fingerprint (batchsvc/inference/fingerprint.py), instead of the engine.

Sources are chosen at submit (`reuse: "latest"` or `reuse_from: [ids]`). Prepare
builds an index of the sources' successful lines, fingerprint -> where the line
is in a local copy of the source's results file, so a 170K-line source costs a
dict of offsets in memory, not its lines. Only results files are indexed:
errors are never reused."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from batchsvc.errors import ErrorType, JobNotFound, ServiceError
from batchsvc.inference import outputs
from batchsvc.services import Services
from batchsvc.storage.base import ObjectNotFound
from batchsvc.store.jobs import Job, JobStatus, is_job_id

REUSE_LATEST = "latest"
# A source must have finished with results; a cancelled or expired job's answered lines count too.
_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED})


def _refuse(message: str, field: str = "reuse_from") -> ServiceError:
    return ServiceError(ErrorType.VALIDATION, message, {"fields": {field: [message]}})


def latest_run(svc: Services, tenant: str, job_name: str, model: str) -> Job | None:
    """The tenant's newest completed job of `model` named `job_name`."""
    for job in svc.jobs.newest(tenant=tenant):
        if (
            job.status is JobStatus.COMPLETED
            and job.model == model
            and job.metadata.get("job_name") == job_name
            and job.results_key
        ):
            return job
    return None


def reuse_sources(
    svc: Services,
    *,
    tenant: str,
    model: str,
    metadata: dict[str, Any],
    reuse: str | None,
    reuse_from: list[str] | None,
    force: bool,
) -> list[str]:
    """The ids of the jobs a new job may reuse answers from, checked at submit.
    Another tenant's job is "not found", as everywhere else."""
    if force:
        return []
    if reuse is not None and reuse != REUSE_LATEST:
        raise _refuse(f"reuse must be {REUSE_LATEST!r}", "reuse")
    sources: list[str] = []
    for job_id in reuse_from or []:
        try:
            job = svc.jobs.get(job_id) if is_job_id(job_id) else None
        except JobNotFound:
            job = None
        if job is None or job.tenant != tenant:
            raise _refuse(f"no job {job_id!r}")
        if job.status not in _FINISHED or not job.results_key:
            raise _refuse(f"job {job_id!r} is {job.status.value}; reuse needs a finished job with results")
        if job_id not in sources:
            sources.append(job_id)
    if reuse == REUSE_LATEST:
        name = metadata.get("job_name")
        if not name:
            raise _refuse('reuse "latest" needs metadata.job_name: the name of the runs to reuse from', "reuse")
        latest = latest_run(svc, tenant, str(name), model)
        if latest is not None and latest.id not in sources:
            sources.append(latest.id)
    return sources


class ReuseIndex:
    """fingerprint -> the first successful line with it, over the sources in order."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._files: list[tuple[str, IO[bytes]]] = []
        self._where: dict[str, tuple[int, int]] = {}

    def add_source(self, svc: Services, job: Job) -> None:
        if job.results_key is None:
            return
        path = self.workdir / f"source-{len(self._files)}.jsonl"
        try:
            svc.storage.download(job.results_key, path)
        except ObjectNotFound:  # retention deleted it: nothing to reuse from this one
            return
        number = len(self._files)
        fh = path.open("rb")
        self._files.append((job.id, fh))
        offset = 0
        for raw in fh:
            if raw.strip():
                line = orjson.loads(raw)
                fingerprint = line.get("fingerprint")
                if fingerprint and outputs.is_success(line):
                    self._where.setdefault(fingerprint, (number, offset))
            offset += len(raw)

    def __len__(self) -> int:
        return len(self._where)

    def answer(self, fingerprint: str | None) -> tuple[str, dict[str, Any]] | None:
        """(source job id, its output line) for a fingerprint, if a source has one."""
        where = self._where.get(fingerprint) if fingerprint else None
        if where is None:
            return None
        job_id, fh = self._files[where[0]]
        fh.seek(where[1])
        return job_id, orjson.loads(fh.readline())

    def close(self) -> None:
        for _, fh in self._files:
            fh.close()


@contextmanager
def reuse_index(svc: Services, tenant: str, source_ids: list[str]) -> Iterator[ReuseIndex]:
    """The index over the sources of a job of `tenant`; a source of another
    tenant is never read (submit refuses them; this holds even if a record lies)."""
    with tempfile.TemporaryDirectory(prefix="batchsvc-reuse-") as workdir:
        index = ReuseIndex(Path(workdir))
        try:
            for job_id in source_ids:
                try:
                    source = svc.jobs.get(job_id)
                except JobNotFound:
                    continue
                if source.tenant == tenant:
                    index.add_source(svc, source)
            yield index
        finally:
            index.close()
