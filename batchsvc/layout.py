"""Where each object of a job lives in storage. Deterministic keys: a re-run of any
step writes to the same place, so it can never leave a second copy behind."""

from __future__ import annotations


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.jsonl"


def job_record_key(job_id: str) -> str:
    """A copy of the job record, so a job can be rebuilt if Redis loses it."""
    return f"jobs/{job_id}/job.json"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def _shard(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/shards/{index:05d}"


def shard_input_key(job_id: str, index: int) -> str:
    return f"{_shard(job_id, index)}/input.jsonl"


def shard_parts_prefix(job_id: str, index: int) -> str:
    return f"{_shard(job_id, index)}/parts/"


def shard_part_key(job_id: str, index: int, seq: int, run: str) -> str:
    """`run` names the run that wrote the part, so two runs of one shard (a
    duplicate delivery) never overwrite each other's checkpoints."""
    return f"{shard_parts_prefix(job_id, index)}{seq:06d}-{run}.jsonl"


def shard_refunds_prefix(job_id: str, index: int) -> str:
    """Starts of the shard that an outage ended, recorded in storage when Redis,
    where starts are counted, was the thing down."""
    return f"{_shard(job_id, index)}/refunds/"


def shard_output_key(job_id: str, index: int, run: str) -> str:
    """Each run of a shard writes its own output; the summary that wins the
    conditional create says which one is the shard's."""
    return f"{_shard(job_id, index)}/{run}.output.jsonl"


def shard_summary_key(job_id: str, index: int) -> str:
    return f"{_shard(job_id, index)}/summary.json"


def results_key(job_id: str) -> str:
    return f"jobs/{job_id}/results.jsonl"


def errors_key(job_id: str) -> str:
    return f"jobs/{job_id}/errors.jsonl"


def file_key(file_id: str) -> str:
    return f"files/{file_id}"
