"""Where each object of a job lives in storage. Deterministic keys: a re-run of any
step writes to the same place, so it can never leave a second copy behind.

Every key starts with `tenants/{tenant}/`, so one tenant's data is one prefix:
for bucket policies, lifecycle rules, an export or a deletion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class JobRef(Protocol):
    """Whatever names a job: a `Job`, a `Manifest`, a `ShardSummary`, a `JobKey`."""

    @property
    def tenant(self) -> str: ...

    @property
    def job_id(self) -> str: ...


@dataclass(frozen=True)
class JobKey:
    """A job named by its tenant and id alone, where its record is not at hand."""

    tenant: str
    job_id: str


def tenant_prefix(tenant: str) -> str:
    return f"tenants/{tenant}/"


def job_prefix(job: JobRef) -> str:
    return f"tenants/{job.tenant}/jobs/{job.job_id}/"


def input_key(job: JobRef) -> str:
    return f"{job_prefix(job)}input.jsonl"


def job_record_key(job: JobRef) -> str:
    """A copy of the job record, so a job can be rebuilt if Redis loses it."""
    return f"{job_prefix(job)}job.json"


def manifest_key(job: JobRef) -> str:
    return f"{job_prefix(job)}manifest.json"


def _shard(job: JobRef, index: int) -> str:
    return f"{job_prefix(job)}shards/{index:05d}"


def shard_input_key(job: JobRef, index: int) -> str:
    return f"{_shard(job, index)}/input.jsonl"


def shard_parts_prefix(job: JobRef, index: int) -> str:
    return f"{_shard(job, index)}/parts/"


def shard_part_key(job: JobRef, index: int, seq: int, run: str) -> str:
    """`run` names the run that wrote the part, so two runs of one shard (a
    duplicate delivery) never overwrite each other's checkpoints."""
    return f"{shard_parts_prefix(job, index)}{seq:06d}-{run}.jsonl"


def shard_refunds_prefix(job: JobRef, index: int) -> str:
    """Starts of the shard that an outage ended, recorded in storage when Redis,
    where starts are counted, was the thing down."""
    return f"{_shard(job, index)}/refunds/"


def shard_output_key(job: JobRef, index: int, run: str) -> str:
    """Each run of a shard writes its own output; the summary that wins the
    conditional create says which one is the shard's."""
    return f"{_shard(job, index)}/{run}.output.jsonl"


def shard_summary_key(job: JobRef, index: int) -> str:
    return f"{_shard(job, index)}/summary.json"


def results_key(job: JobRef) -> str:
    return f"{job_prefix(job)}results.jsonl"


def errors_key(job: JobRef) -> str:
    return f"{job_prefix(job)}errors.jsonl"


def estimate_input_key(tenant: str, estimate_id: str) -> str:
    """A dry run's input, while the cpu worker reads it; deleted when it has."""
    return f"{tenant_prefix(tenant)}estimates/{estimate_id}.jsonl"


def file_key(tenant: str, file_id: str) -> str:
    return f"{tenant_prefix(tenant)}files/{file_id}"


BACKUPS_PREFIX = "backups/state/"


def backup_key(stamp: str) -> str:
    """A snapshot of the job state (`batchsvc admin backup`), outside every tenant's
    prefix: it holds all of them. `stamp` sorts by time (20261201T230000Z)."""
    return f"{BACKUPS_PREFIX}{stamp}.json.gz"
