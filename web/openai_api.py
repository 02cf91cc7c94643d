"""The OpenAI-compatible Files and Batches API: `/v1/files` and `/v1/batches`.

A second shape over the same job model as `/v1/batch`: a batch here is a
batchsvc job, created by `submit_job` and run by the same pipeline. Point the
official `openai` client at `{host}/v1` and it works unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, g

from batchsvc.access import Role
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.pipeline.costs import Usage, job_usage
from batchsvc.pipeline.lifecycle import cancel_job
from batchsvc.pipeline.submit import model_of_first_line, store_upload, submit_job
from batchsvc.services import Services
from batchsvc.storage.base import ObjectNotFound, content_disposition
from batchsvc.store.files import FileNotFound, FileRecord
from batchsvc.store.jobs import Job, JobStatus
from web.api import JSONL, enqueue_prepare
from web.audit import audited
from web.auth import current_key, requires, visible_file, visible_job, visible_tenant
from web.idempotency import idempotent
from web.openai_schemas import (
    OPENAI_STATUS,
    UPLOAD_PURPOSE,
    CreateBatchSchema,
    ListFilesSchema,
    OpenAIBatchListSchema,
    OpenAIBatchSchema,
    OpenAIFileDeletedSchema,
    OpenAIFileListSchema,
    OpenAIFileSchema,
    UploadFileSchema,
)
from web.openapi import Blueprint
from web.schemas import PageSchema

bp = Blueprint(
    "openai",
    __name__,
    url_prefix="/v1",
    description="OpenAI's Files and Batches API: point the official openai client at {host}/v1",
)

NO_FILE = "no such file (or another tenant's)"
NO_BATCH = "no such batch (or another tenant's)"


def services() -> Services:
    return current_app.extensions["batchsvc"]


def unix(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


@bp.after_request
def _no_retry_on_conflict(response: Response) -> Response:
    # OpenAI's clients retry a 409 (for them, a lock timeout). Here a 409 is a
    # state that retrying cannot change (e.g. cancelling a finished batch), unless
    # the view says otherwise (an Idempotency-Key whose first request is still running).
    if response.status_code == 409 and "x-should-retry" not in response.headers:
        response.headers["x-should-retry"] = "false"
    return response


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# --- files ---------------------------------------------------------------------------


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.size,
        "created_at": int(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


@bp.post("/files")
@audited("file_upload")
@requires(Role.SUBMITTER)
@idempotent("files")
@bp.arguments(UploadFileSchema, location="multipart")
@bp.response(200, OpenAIFileSchema)
@bp.error(409, "an Idempotency-Key whose first request is still being processed")
@bp.error(413, "a file over max_file_bytes")
@bp.error(415, "not multipart/form-data")
def create_file(args: dict[str, Any]) -> dict[str, Any]:
    """Upload a JSONL of requests (`purpose=batch`) for a batch to read."""
    upload = args["file"]
    try:
        record = store_upload(services(), current_key().tenant, upload.stream, args["filename"], UPLOAD_PURPOSE)
    finally:
        upload.close()  # a large upload spools to a temp file: release it now
    g.audit_file_id = record.id
    return file_object(record)


@bp.get("/files")
@bp.arguments(ListFilesSchema, location="query")
@bp.response(200, OpenAIFileListSchema)
@bp.error(404, "`after` names no file")
def list_files(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's files (an admin's: every tenant's), newest first."""
    page, has_more = services().files.page(
        limit=query["limit"],
        after=query["after"],
        tenant=visible_tenant(),
        keep=lambda f: query["purpose"] is None or f.purpose == query["purpose"],
    )
    return _list_body([file_object(f) for f in page], has_more)


@bp.get("/files/<file_id>")
@bp.response(200, OpenAIFileSchema)
@bp.error(404, NO_FILE)
def get_file(file_id: str) -> dict[str, Any]:
    """A file's record."""
    return file_object(visible_file(file_id))


@bp.get("/files/<file_id>/content")
@audited("file_download")
@bp.response(200, {"type": "string"}, content_type=JSONL, description="the file's bytes")
@bp.error(404, NO_FILE)
def get_file_content(file_id: str) -> Response:
    """Stream a file: an upload, or a batch's output or error file."""
    svc = services()
    record = visible_file(file_id)
    try:
        stream = svc.storage.open(record.key)
    except ObjectNotFound:
        raise ServiceError(
            ErrorType.NOT_FOUND, f"the content of file {file_id!r} no longer exists", {"file_id": file_id}
        ) from None

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(256 * 1024):
                yield chunk

    headers = {
        "Content-Length": str(record.size),
        "Content-Disposition": content_disposition(record.filename),
    }
    # Every purpose a file can have (FILE_PURPOSES) is JSONL.
    return Response(chunks(), mimetype=JSONL, headers=headers)


@bp.delete("/files/<file_id>")
@audited("file_delete")
@requires(Role.SUBMITTER)
@bp.response(200, OpenAIFileDeletedSchema)
@bp.error(404, NO_FILE)
def delete_file(file_id: str) -> dict[str, Any]:
    """An uploaded file loses its bytes and its record. A batch's output or error
    file loses its record only: the bytes are the job's results, which the
    /v1/batch API of the same job still serves."""
    svc = services()
    record = visible_file(file_id)
    if record.purpose == UPLOAD_PURPOSE:
        svc.storage.delete(record.key)
    svc.files.delete(record)
    return {"id": file_id, "object": "file", "deleted": True}


# --- batches -------------------------------------------------------------------------

# Which terminal status each `*_at` timestamp belongs to (all come from finished_at).
_FINISHED_AT = {
    JobStatus.COMPLETED: "completed_at",
    JobStatus.FAILED: "failed_at",
    JobStatus.EXPIRED: "expired_at",
    JobStatus.CANCELLED: "cancelled_at",
}


def _usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's batch usage shape (reasoning tokens are not told apart here)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def batch_object(svc: Services, job: Job) -> dict[str, Any]:
    """A job as an OpenAI batch object."""
    counts = svc.jobs.counts(job.id)
    if job.stats is not None:  # finalize merged the outputs: the exact figures
        completed, failed = job.stats["successful"], job.stats["failed"]
    else:
        completed, failed = counts.completed, counts.failed
    errors = None
    if job.errors:
        data = [{k: e.get(k) for k in ("code", "message", "param", "line")} for e in job.errors]
        errors = {"object": "list", "data": data}
    body: dict[str, Any] = {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "model": job.model,
        "errors": errors,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": OPENAI_STATUS.get(job.status, job.status.value),
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": unix(job.created_at),
        "in_progress_at": unix(job.in_progress_at),
        "expires_at": unix(job.expires_at),
        "finalizing_at": unix(job.finalizing_at),
        "cancelling_at": unix(job.cancelling_at),
        "request_counts": {"total": job.total or 0, "completed": completed, "failed": failed},
        "metadata": job.metadata,
        "usage": _usage(job_usage(job, counts)),
    }
    for status, name in _FINISHED_AT.items():
        body[name] = unix(job.finished_at) if job.status is status else None
    return body


@bp.post("/batches")
@audited("submit")
@requires(Role.SUBMITTER)
@idempotent("batches")
@bp.arguments(CreateBatchSchema)
@bp.response(200, OpenAIBatchSchema)
@bp.error(404, "no such input file (or another tenant's)")
@bp.error(409, "an Idempotency-Key whose first request is still being processed")
@bp.error(422, "a field at fault, named in details.fields")
@bp.error(429, "a rate limit or quota: Retry-After says when to retry")
def create_batch(args: dict[str, Any]) -> dict[str, Any]:
    """Create a batch of the requests in an uploaded file (`purpose=batch`).
    The model is `metadata.model`, or the first line's `body.model`."""
    svc = services()
    input_file = visible_file(args["input_file_id"])
    if input_file.tenant != current_key().tenant:  # an admin runs jobs as its own tenant only
        raise FileNotFound(input_file.id)
    if input_file.purpose != UPLOAD_PURPOSE:
        raise ServiceError(
            ErrorType.VALIDATION,
            f"file {input_file.id!r} has purpose {input_file.purpose!r}; batches read files of purpose 'batch'",
            {"fields": {"input_file_id": [f"purpose must be '{UPLOAD_PURPOSE}'"]}},
        )
    metadata = args["metadata"]
    model = metadata.get("model") or model_of_first_line(svc, input_file)
    if model is None:
        raise ServiceError(
            ErrorType.VALIDATION,
            "no model: set metadata.model, or body.model in the first line of the input file",
            {"fields": {"metadata": {"model": ["required when the first line has no body.model"]}}},
        )
    job = submit_job(
        svc,
        tenant=current_key().tenant,
        model=model,
        enqueue=enqueue_prepare(metadata),
        input_file=input_file,
        endpoint=args["endpoint"],
        completion_window=args["completion_window"],
        metadata=metadata,
    )
    g.audit_job_id = job.id
    return batch_object(svc, job)


@bp.get("/batches/<batch_id>")
@bp.response(200, OpenAIBatchSchema)
@bp.error(404, NO_BATCH)
def get_batch(batch_id: str) -> dict[str, Any]:
    """A batch: its status, request counts, times, usage and files."""
    return batch_object(services(), visible_job(batch_id))


@bp.post("/batches/<batch_id>/cancel")
@audited("cancel")
@requires(Role.SUBMITTER)
@bp.response(200, OpenAIBatchSchema, description="the batch, cancelling (or cancelled, if it had not started)")
@bp.error(404, NO_BATCH)
@bp.error(409, "the batch has already ended")
def cancel_batch(batch_id: str) -> dict[str, Any]:
    """Cancel a batch: running requests stop at their next checkpoint; what finished is kept."""
    svc = services()
    return batch_object(svc, cancel_job(svc, visible_job(batch_id).id))


@bp.get("/batches")
@bp.arguments(PageSchema, location="query")
@bp.response(200, OpenAIBatchListSchema)
@bp.error(404, "`after` names no batch")
def list_batches(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's batches (an admin's: every tenant's), newest first."""
    svc = services()
    page, has_more = svc.jobs.page(limit=query["limit"], after=query["after"], tenant=visible_tenant())
    return _list_body([batch_object(svc, job) for job in page], has_more)
