"""Rescoring campaigns: the runs of a scheduled entry (configs/schedule.yaml).

Each run reuses the answers of the entry's last completed run (`reuse: false` in
the entry turns that off), so a night in which few profiles changed sends only
those to the engine, and a night with nothing new completes at once.

A run's id is derived from its tenant, entry name and scheduled time, so two
beat processes, or a beat that restarted, submit the same run once: the second
submission finds the job and queues nothing. A tick that comes while the
entry's previous run is still active is skipped; the next tick reuses its work."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batchsvc.access import DEFAULT_TENANT
from batchsvc.pipeline.reuse import REUSE_LATEST
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.store.jobs import Job

log = logging.getLogger(__name__)


def run_id(tenant: str, name: str, scheduled_for: float) -> str:
    """The job id of the run of entry `name` scheduled at `scheduled_for` (unix seconds)."""
    seed = f"campaign\0{tenant}\0{name}\0{int(scheduled_for)}".encode()
    return "batch_" + hashlib.sha256(seed).hexdigest()[:32]


def submit_run(
    svc: Services, entry: dict[str, Any], scheduled_for: float, enqueue: Callable[[str], None]
) -> Job | None:
    """Submit the entry's run for this scheduled time, once; None when the previous
    run is still active and this tick is skipped."""
    tenant, name = entry.get("tenant", DEFAULT_TENANT), entry["name"]
    job_id = run_id(tenant, name, scheduled_for)
    if svc.jobs.exists(job_id):
        return svc.jobs.get(job_id)
    running = [j.id for j in svc.jobs.active_jobs(tenant) if j.metadata.get("job_name") == name]
    if running:
        log.info("campaign %s: run %s is still active; skipping the tick of %s", name, running[0], scheduled_for)
        return None
    reuse = bool(entry.get("reuse", True))
    when = datetime.fromtimestamp(scheduled_for, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return submit_job(
        svc,
        tenant=tenant,
        model=entry["model"],
        input_url=entry["input_file_url"],
        webhook_url=entry.get("webhook_url"),
        metadata={"job_name": name, "priority": int(entry.get("priority", 3)), "scheduled_for": when},
        reuse=REUSE_LATEST if reuse else None,
        force=not reuse,
        job_id=job_id,
        enqueue=enqueue,
    )
