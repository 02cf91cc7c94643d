"""Create a job: the one entry point for the HTTP API and for scheduled runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from batchsvc import layout
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.jobs import Counts, Job, job_error, new_job_id
from batchsvc.progress import estimate_completion
from batchsvc.services import Services


class _CountingReader:
    """Counts bytes and newlines as the upload streams through to storage, and
    stops at the size limit instead of storing an oversized file."""

    def __init__(self, stream: IO[bytes], limit: int):
        self.stream = stream
        self.limit = limit
        self.size = 0
        self.lines = 0
        self._last = b"\n"

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n if n and n > 0 else 1024 * 1024)
        self.size += len(chunk)
        if self.size > self.limit:
            raise ServiceError(
                ErrorType.PAYLOAD_TOO_LARGE,
                f"input file exceeds max_file_bytes={self.limit}",
                {
                    "fields": {"file": [f"larger than max_file_bytes={self.limit}"]},
                    "limit": "max_file_bytes",
                    "max": self.limit,
                },
            )
        if chunk:
            self.lines += chunk.count(b"\n")
            self._last = chunk[-1:]
        return chunk

    @property
    def line_estimate(self) -> int:
        return self.lines + (0 if self._last == b"\n" else 1)


def submit_job(
    svc: Services,
    *,
    model: str,
    enqueue: Callable[[str], None],
    input_url: str | None = None,
    upload: IO[bytes] | None = None,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Job:
    """Store the input (when uploaded), record the job as queued and hand its id
    to `enqueue` (which sends the prepare task). Exactly one of input_url/upload."""
    if (input_url is None) == (upload is None):
        raise ServiceError(
            ErrorType.VALIDATION,
            "give exactly one of input_file_url or file",
            {"fields": {"input_file_url": ["give this or a file, not both"]}},
        )
    spec = svc.models.get(model)
    if spec is None:
        raise ServiceError(
            ErrorType.VALIDATION,
            f"unknown model {model!r}",
            {
                "fields": {"model": [f"not one of: {', '.join(svc.models.aliases())}"]},
                "available": svc.models.aliases(),
            },
        )
    job = Job(id=new_job_id(), model=model, webhook_url=webhook_url, metadata=metadata or {}, input_url=input_url)
    if upload is not None:
        reader = _CountingReader(upload, svc.settings.max_file_bytes)
        key = layout.input_key(job.id)
        svc.storage.put_stream(key, reader, "application/jsonl")  # type: ignore[arg-type]
        job.input_key = key
        job.total = reader.line_estimate  # an estimate until validation counts request lines
    fallback = svc.jobs.model_rate(model) or spec.expected_req_per_sec
    job.estimated_completion = estimate_completion(
        now=job.created_at, total=job.total, counts=Counts(), started_at=None, fallback_req_per_sec=fallback
    )
    svc.jobs.create(job)
    try:
        enqueue(job.id)
    except Exception as exc:  # the broker is the one thing we cannot do without here
        svc.jobs.fail(job.id, [job_error("enqueue_failed", "could not queue the job")])
        raise ServiceError(ErrorType.UNAVAILABLE, "the job queue is unavailable; try again later") from exc
    return job
