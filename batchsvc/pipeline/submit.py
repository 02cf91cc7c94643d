"""Create a job: the one entry point for the HTTP API and for scheduled runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, Any

import orjson

from batchsvc import metrics
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.inference.models import ModelSpec
from batchsvc.outbound.netguard import Allowlist, BlockedURL, OutboundError, vet
from batchsvc.pipeline.progress import estimate_completion
from batchsvc.pipeline.recovery import save_job_record
from batchsvc.pipeline.reuse import reuse_sources
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound
from batchsvc.store.files import FileRecord, new_file_id
from batchsvc.store.jobs import ActiveLimitReached, Counts, Job, JobExists, job_error, new_job_id
from batchsvc.store.tenants import active_jobs_error, check_quota, max_active_jobs


class CappedReader:
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


# The one spelling of a completion window, for the schemas and for window_seconds:
# a number of at most 9 digits and a unit, so it is bounded before it is converted.
WINDOW_PATTERN = r"^([1-9][0-9]{0,8})([smhd])$"
_WINDOW = re.compile(WINDOW_PATTERN)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str, max_seconds: int) -> int:
    """'24h' -> 86400. OpenAI only offers 24h; shorter windows serve tests and
    urgent jobs, longer ones (up to `max_seconds`) very large files."""
    match = _WINDOW.match(window)
    if not match:
        raise ServiceError(
            ErrorType.VALIDATION,
            f"completion_window {window[:20]!r} is not a duration like '24h'",
            {"fields": {"completion_window": ["use a number and a unit: s, m, h or d (e.g. '24h')"]}},
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > max_seconds:
        raise ServiceError(
            ErrorType.VALIDATION,
            f"completion_window {window!r} is longer than max_completion_window_s={max_seconds}",
            {
                "fields": {"completion_window": [f"at most {max_seconds} seconds"]},
                "limit": "max_completion_window_s",
                "max": max_seconds,
            },
        )
    return seconds


def _refuse_blocked_urls(svc: Services, **urls: str | None) -> None:
    """Refuse at submit what the fetch or the webhook would refuse later (SSRF
    rules in batchsvc/outbound/netguard.py). A host that does not resolve now is left
    for later: it may be a network blip."""
    allow = Allowlist.parse(svc.settings.outbound_allowlist)
    for field, url in urls.items():
        if url is None:
            continue
        try:
            vet(url, allow)
        except BlockedURL as exc:
            raise ServiceError(
                ErrorType.VALIDATION, f"{field} refused: {exc}", {"fields": {field: [str(exc)]}}
            ) from None
        except OutboundError:
            pass


def store_upload(svc: Services, tenant: str, stream: IO[bytes], filename: str, purpose: str = "batch") -> FileRecord:
    """Store an uploaded input file (OpenAI Files API) under the same byte cap as
    a /v1/batch upload; past it, nothing is stored."""
    record_id = new_file_id()
    key = layout.file_key(tenant, record_id)
    reader = CappedReader(stream, svc.settings.max_file_bytes)
    info = svc.storage.put_stream(key, reader, "application/jsonl")  # type: ignore[arg-type]
    record = FileRecord(
        id=record_id,
        filename=filename,
        purpose=purpose,
        size=info.size,
        key=key,
        tenant=tenant,
        lines=reader.line_estimate,
    )
    return svc.files.save(record)


def model_of_first_line(svc: Services, record: FileRecord) -> str | None:
    """`body.model` of a file's first line, as a catalogue alias when it names one.
    OpenAI puts the model in every line, a batchsvc job has one; prepare then
    checks that every line agrees."""
    try:
        with svc.storage.open(record.key) as stream:
            line = stream.readline(svc.settings.max_line_bytes + 1)
    except ObjectNotFound:
        raise ServiceError(
            ErrorType.NOT_FOUND, f"the content of file {record.id!r} no longer exists", {"file_id": record.id}
        ) from None
    try:
        model = orjson.loads(line)["body"]["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(model, str):
        return None
    for alias in svc.models.aliases():
        spec = svc.models.get(alias)
        if spec is not None and model in spec.names:
            return alias
    return model  # unknown: submit_job refuses it, naming it


def served_model(svc: Services, model: str) -> ModelSpec:
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
    return spec


def submit_job(
    svc: Services,
    *,
    tenant: str,
    model: str,
    enqueue: Callable[[str], None],
    input_url: str | None = None,
    upload: IO[bytes] | None = None,
    input_file: FileRecord | None = None,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    endpoint: str | None = None,
    completion_window: str | None = None,
    reuse: str | None = None,
    reuse_from: list[str] | None = None,
    force: bool = False,
    job_id: str | None = None,
) -> Job:
    """Record a job of `tenant` as queued and hand its id to `enqueue` (which
    sends the prepare task). The input is exactly one of: a URL to fetch, an
    upload to store now, or a file already uploaded through the Files API.
    Past the tenant's quotas it answers 429 and keeps nothing.

    `reuse="latest"` or `reuse_from=[ids]` name earlier jobs of the tenant whose
    answers identical requests take instead of the engine; `force` turns it off.

    `job_id` is the id to use when the caller has chosen one (an idempotent
    retry's claim, a scheduled run's deterministic id): when a job of that id
    exists already, that job is returned and nothing is queued again."""
    if job_id is not None and svc.jobs.exists(job_id):
        return svc.jobs.get(job_id)
    if sum(x is not None for x in (input_url, upload, input_file)) != 1:
        raise ServiceError(
            ErrorType.VALIDATION,
            "give exactly one of input_file_url or file",
            {"fields": {"input_file_url": ["give this or a file, not both"]}},
        )
    _refuse_blocked_urls(svc, input_file_url=input_url, webhook_url=webhook_url)
    spec = served_model(svc, model)
    sources = reuse_sources(
        svc, tenant=tenant, model=model, metadata=metadata or {}, reuse=reuse, reuse_from=reuse_from, force=force
    )
    policy = svc.tenants.get(tenant)
    # A URL's size is known once fetched: prepare checks the queued-request quota then.
    check_quota(policy, svc.settings, svc.jobs, (input_file.lines or 0) if input_file else 0)
    # Parsed (and bounded) before anything is stored: a stored window must render.
    window_s = None
    if completion_window is not None:
        window_s = window_seconds(completion_window, svc.settings.max_completion_window_s)
    job = Job(
        id=job_id or new_job_id(),
        tenant=tenant,
        model=model,
        webhook_url=webhook_url,
        metadata=metadata or {},
        input_url=input_url,
        endpoint=endpoint,
        completion_window=completion_window,
        reuse_from=sources or None,
    )
    if window_s is not None:
        job.expires_at = job.created_at + window_s
    if input_file is not None:
        job.input_key = input_file.key
        job.input_file_id = input_file.id
        job.submitted_lines = input_file.lines
    if upload is not None:
        reader = CappedReader(upload, svc.settings.max_file_bytes)
        key = layout.input_key(job)
        svc.storage.put_stream(key, reader, "application/jsonl")  # type: ignore[arg-type]
        job.input_key = key
        job.total = job.submitted_lines = reader.line_estimate  # an estimate until validation counts request lines
        try:
            check_quota(policy, svc.settings, svc.jobs, job.total)
        except ServiceError:
            svc.storage.delete(key)
            raise
    fallback = svc.jobs.model_rate(model) or spec.expected_req_per_sec
    job.estimated_completion = estimate_completion(
        now=job.created_at, total=job.total, counts=Counts(), started_at=None, fallback_req_per_sec=fallback
    )
    try:
        svc.jobs.create(job, max_active=max_active_jobs(policy, svc.settings), if_absent=job_id is not None)
    except JobExists:  # the same scheduled run, submitted by another beat a moment ago
        return svc.jobs.get(job.id)
    except ActiveLimitReached as exc:  # another submission took the last place meanwhile
        if upload is not None:
            svc.storage.delete(job.input_key or "")
        raise active_jobs_error(tenant, exc.limit) from None
    metrics.JOBS_SUBMITTED.labels(job.model, job.tenant).inc()
    save_job_record(svc, job.id)
    try:
        enqueue(job.id)
    except Exception as exc:  # the broker is the one thing we cannot do without here
        svc.jobs.fail(job.id, [job_error("enqueue_failed", "could not queue the job")])
        raise ServiceError(ErrorType.UNAVAILABLE, "the job queue is unavailable; try again later") from exc
    return job
