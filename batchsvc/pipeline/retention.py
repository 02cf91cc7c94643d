"""Data retention: the objects of a job (its input, shards and results) are
deleted once the job has been over for `retention_s`. The job record stays,
marked `data_expired_at`, so its status and stats remain visible and the
results endpoint can say plainly that the data is gone (410)."""

from __future__ import annotations

import logging
import time

from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.store.files import FileNotFound

log = logging.getLogger(__name__)


def expire_job_data(svc: Services, *, now: float | None = None) -> list[str]:
    """Delete the objects of every finished job past retention; returns their ids."""
    now = time.time() if now is None else now
    cutoff = now - svc.settings.retention_s
    expired = []
    # A job finishes after it was created, so only jobs created before the cutoff can qualify.
    for job_id in svc.jobs.ids_created_before(cutoff):
        job = svc.jobs.find(job_id)
        if job is None or not job.status.terminal or job.data_expired_at is not None:
            continue
        if job.finished_at is None or job.finished_at > cutoff:
            continue
        svc.storage.delete_prefix(layout.job_prefix(job))
        for file_id in (job.input_file_id, job.output_file_id, job.error_file_id):
            if file_id is None:
                continue
            try:
                record = svc.files.get(file_id)
            except FileNotFound:
                continue
            svc.storage.delete(record.key)
            svc.files.delete(record)
        svc.jobs.update(job.id, data_expired_at=now)
        expired.append(job.id)
    if expired:
        log.info("retention: deleted the data of %d job(s)", len(expired))
    return expired
