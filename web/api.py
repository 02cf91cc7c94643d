"""The /v1 blueprint: HTTP in, calls of the batchsvc core out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, current_app, g, jsonify, request, url_for

from batchsvc.access import Role
from batchsvc.errors import ErrorType, JobNotFound, ServiceError
from batchsvc.pipeline import progress
from batchsvc.pipeline.costs import cost_report, job_usage
from batchsvc.pipeline.estimate import start_estimate
from batchsvc.pipeline.lifecycle import cancel_job
from batchsvc.pipeline.partial import finished_lines
from batchsvc.pipeline.recovery import claim_redrive, plan_redrive, rebuild_job
from batchsvc.pipeline.retries import retry_failed_requests
from batchsvc.pipeline.submit import submit_job
from batchsvc.services import Services
from batchsvc.storage.base import InvalidDownloadToken, ObjectNotFound
from batchsvc.storage.local import LocalStorage
from batchsvc.store.estimates import EstimateNotFound
from batchsvc.store.jobs import Counts, Job, JobStatus, is_job_id, job_priority
from tasks.names import ESTIMATE, PREPARE, REDRIVE, celery_priority
from web.audit import audited
from web.auth import current_key, requires, visible_job, visible_tenant
from web.idempotency import idempotent
from web.openapi import Blueprint
from web.request import json_object, single_values
from web.schemas import (
    BatchJobSchema,
    BatchListSchema,
    BatchResultsSchema,
    BatchRetrySchema,
    CostReportSchema,
    CostsQuerySchema,
    EstimateDeletedSchema,
    EstimateSchema,
    JobCreatedSchema,
    PageSchema,
    PartialQuerySchema,
    ResultsQuerySchema,
    RetryQuerySchema,
    SubmitBatchFormSchema,
    SubmitBatchSchema,
)

bp = Blueprint(
    "v1", __name__, url_prefix="/v1", description="The native batch API: jobs, their results, dry runs, cost reports"
)

JSONL = "application/jsonl"


def services() -> Services:
    return current_app.extensions["batchsvc"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def enqueue_prepare(metadata: dict[str, Any]):
    """The enqueue function submit_job calls: send prepare at the job's priority."""
    celery = current_app.extensions["celery"]
    queue = services().settings.cpu_queue
    priority = celery_priority(job_priority(metadata))

    def enqueue(job_id: str) -> None:
        celery.send_task(PREPARE, args=[job_id], queue=queue, priority=priority)

    return enqueue


def _read_submission() -> dict[str, Any]:
    """The submission, loaded by the schema of its content type (which checks
    its fields, the file part and "not both" among them); `file`, if any, is the upload."""
    content_type = request.mimetype
    if content_type == "application/json":
        return SubmitBatchSchema().load(json_object())
    if content_type == "multipart/form-data":
        data = single_values(request.form)
        files = single_values(request.files, "file part")
        if "file" in files:
            data["file"] = files["file"]
        return SubmitBatchFormSchema().load(data)
    raise ServiceError(
        ErrorType.UNSUPPORTED_MEDIA_TYPE,
        "send application/json with input_file_url, or multipart/form-data with a file",
        {"content_type": content_type or None},
    )


# One view, two bodies: smorest documents one content type per @arguments, so the
# view reads the body by its content type and the document says both.
SUBMISSION_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": SubmitBatchSchema},
        "multipart/form-data": {"schema": SubmitBatchFormSchema},
    },
}
# A dry run answers 202 too, with its estimate instead of a job.
SUBMISSION_ANSWERS = {202: {"content": {"application/json": {"schema": {"oneOf": [JobCreatedSchema, EstimateSchema]}}}}}


@bp.post("/batch")
@audited("submit")
@requires(Role.SUBMITTER)
@idempotent("batch")
@bp.doc(requestBody=SUBMISSION_BODY, responses=SUBMISSION_ANSWERS)
@bp.response(202, JobCreatedSchema, description="the job, queued; with dry_run, the estimate, queued")
@bp.error(409, "an Idempotency-Key whose first request is still being processed")
@bp.error(413, "a body or file over the service's limits")
@bp.error(415, "neither application/json nor multipart/form-data")
@bp.error(422, "a field at fault, named in details.fields (or details.field)")
@bp.error(429, "a rate limit or quota: Retry-After says when to retry")
def submit_batch() -> Any:
    """Submit a batch: the JSONL at `input_file_url` (application/json) or
    uploaded as the `file` part (multipart/form-data). With `Idempotency-Key`,
    a retried request answers what the first answered."""
    args = _read_submission()
    upload_part = args.pop("file", None)
    metadata = args.get("metadata") or {}
    # What a job and a dry run's estimate are both made of.
    submission: dict[str, Any] = {
        "tenant": current_key().tenant,
        "model": args["model"],
        "input_url": args.get("input_file_url"),
        "upload": upload_part.stream if upload_part is not None else None,
        "metadata": metadata,
        "completion_window": args.get("completion_window"),
        "reuse": args.get("reuse"),
        "reuse_from": args.get("reuse_from"),
        "force": args["force"],
    }
    try:
        if args["dry_run"]:
            return _dry_run(submission)
        job = submit_job(
            services(), webhook_url=args.get("webhook_url"), enqueue=enqueue_prepare(metadata), **submission
        )
    finally:
        if upload_part is not None:
            upload_part.close()  # large uploads spool to a temp file: release it now
    g.audit_job_id = job.id
    body = {
        "job_id": job.id,
        "status": job.status.value,
        "created_at": iso(job.created_at),
        "estimated_completion": iso(job.estimated_completion),
    }
    return body, 202


def _dry_run(submission: dict[str, Any]) -> tuple[Response, int]:
    """Queue the estimate on the cpu worker (it counts tokens with the model's
    tokenizer); the caller reads it at `url`. No job is created."""
    celery = current_app.extensions["celery"]
    queue = services().settings.cpu_queue
    record = start_estimate(
        services(),
        enqueue=lambda estimate_id: celery.send_task(ESTIMATE, args=[estimate_id], queue=queue),
        **submission,
    )
    # Not the job schema of submit_batch's @response: a Response is answered as it is.
    return jsonify(EstimateSchema().dump(estimate_view(record))), 202


def estimate_view(record: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in record.items() if k not in ("tenant", "completion_window_s")}
    view["created_at"] = iso(record["created_at"])
    view["url"] = url_for("v1.get_estimate", estimate_id=record["estimate_id"])
    if "estimated_completion" in record:
        view["estimated_completion"] = iso(record["estimated_completion"])
    return view


def _visible_estimate(estimate_id: str) -> dict[str, Any]:
    try:
        record = services().estimates.get(estimate_id)
    except EstimateNotFound:
        record = None
    tenant = visible_tenant()
    if record is None or (tenant is not None and record["tenant"] != tenant):
        raise ServiceError(ErrorType.NOT_FOUND, f"no estimate {estimate_id!r}", {"estimate_id": estimate_id})
    return record


@bp.get("/estimates/<estimate_id>")
@bp.response(200, EstimateSchema)
@bp.error(404, "no such estimate (or past its TTL, or another tenant's)")
def get_estimate(estimate_id: str) -> dict[str, Any]:
    """A dry run's estimate: `queued` until the cpu worker has counted, then `done`
    (or `invalid`, with the errors a real submission would fail with)."""
    return estimate_view(_visible_estimate(estimate_id))


@bp.delete("/estimates/<estimate_id>")
@requires(Role.SUBMITTER)
@bp.response(200, EstimateDeletedSchema)
@bp.error(404, "no such estimate (or past its TTL, or another tenant's)")
def delete_estimate(estimate_id: str) -> dict[str, Any]:
    """Delete a dry run's estimate."""
    services().estimates.delete(_visible_estimate(estimate_id)["estimate_id"])
    return {"estimate_id": estimate_id, "deleted": True}


def usage_and_cost(job: Job, counts: Counts) -> dict[str, Any]:
    usage = job_usage(job, counts)
    stats = job.stats or {}
    return {
        "usage": {
            "input_tokens": usage.input_tokens,
            "cached_tokens": usage.cached_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
        },
        "reused": stats.get("reused", 0),
        "engine_seconds": stats.get("engine_seconds"),
        "cost": stats.get("cost"),
    }


def job_view(svc: Services, job: Job) -> dict[str, Any]:
    counts = svc.jobs.counts(job.id)
    now = time.time()
    active = not job.status.terminal
    rate = progress.throughput(counts, job.total, job.started_at, job.finished_at or now)
    estimated = job.estimated_completion
    if active and job.status is not JobStatus.QUEUED:
        spec = svc.models.get(job.model)
        fallback = svc.jobs.model_rate(job.model) or (spec.expected_req_per_sec if spec else 0)
        estimated = progress.estimate_completion(
            now=now, total=job.total, counts=counts, started_at=job.started_at, fallback_req_per_sec=fallback
        )
    view: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "model": job.model,
        "progress": {
            "completed": counts.completed,
            "failed": counts.failed,
            "total": job.total,
            "percent": 100.0 if job.status is JobStatus.COMPLETED else progress.percent(counts.done, job.total),
        },
        "throughput": {
            "req_per_sec": rate.req_per_sec,
            "tokens_per_sec": rate.tokens_per_sec,
            "estimated_remaining": rate.estimated_remaining if active else 0,
        },
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "estimated_completion": iso(estimated) if active else None,
        "expires_at": iso(job.expires_at),
        "metadata": job.metadata,
        **usage_and_cost(job, counts),
        "reuse_from": job.reuse_from or [],
        "reproducibility": job.reproducibility,
    }
    if job.errors:
        view["errors"] = job.errors
        view["error_count"] = job.error_count
    if job.stats and "quality" in job.stats:  # schema validity and the answer field's values
        view["quality"] = job.stats["quality"]
    if job.data_expired_at is not None:
        view["data_expired_at"] = iso(job.data_expired_at)
    return view


@bp.get("/reports/costs")
@bp.arguments(CostsQuerySchema, location="query")
@bp.response(200, CostReportSchema)
def report_costs(query: dict[str, Any]) -> dict[str, Any]:
    """Per model, over the caller's completed jobs (an admin's: all tenants')
    created at or after `?since=` (unix seconds): measured req/s, the time and
    cost of 170K requests at that rate, and what was spent."""
    since = query["since"]
    return {"data": cost_report(services(), visible_tenant(), since), "since": iso(since)}


@bp.get("/batch/<job_id>")
@bp.response(200, BatchJobSchema)
@bp.error(404, "no such job (or another tenant's)")
def get_batch(job_id: str) -> dict[str, Any]:
    """A job: status, progress, throughput, times, usage and cost; a failed job's errors."""
    return job_view(services(), visible_job(job_id))


@bp.get("/batch")
@bp.arguments(PageSchema, location="query")
@bp.response(200, BatchListSchema)
@bp.error(404, "`after` names no job")
def list_batches(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's jobs (an admin's: every tenant's), newest first, `limit` after the job `after`."""
    svc = services()
    page, has_more = svc.jobs.page(limit=query["limit"], after=query["after"], tenant=visible_tenant())
    return {
        "data": [job_view(svc, job) for job in page],
        "has_more": has_more,
        "last_id": page[-1].id if page else None,
    }


# Ended with its files written: a job that failed after it was sharded has them too.
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.FAILED})


@bp.get("/batch/<job_id>/results")
@audited("results")
@bp.arguments(ResultsQuerySchema, location="query")
@bp.response(200, BatchResultsSchema)
@bp.error(404, "no such job (or another tenant's)")
@bp.error(409, "the job has not ended (and partial is false, or it is not running): no results yet")
@bp.error(410, "the job's files were deleted after the retention period")
def get_results(query: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Links to the results. `?partial=true` also answers while the job runs,
    with links to what has finished so far."""
    svc = services()
    job = visible_job(job_id)
    if job.data_expired_at is not None:
        raise ServiceError(
            ErrorType.GONE,
            f"the results of this job were deleted on {iso(job.data_expired_at)}, after the retention period",
            {"job_id": job.id, "status": job.status.value, "data_expired_at": iso(job.data_expired_at)},
        )
    if job.status in FINISHED and job.results_key:
        ttl = timedelta(seconds=svc.settings.result_link_ttl_s)
        storage = svc.storage
        return {
            "job_id": job.id,
            "status": job.status.value,
            "results_url": storage.presigned_get_url(job.results_key, ttl, download_name=f"{job.id}-results.jsonl"),
            "errors_url": storage.presigned_get_url(job.errors_key, ttl, download_name=f"{job.id}-errors.jsonl")
            if job.errors_key
            else None,
            "expires_at": iso(time.time() + ttl.total_seconds()),
            "stats": job.stats,
        }
    if query["partial"] and job.status in (JobStatus.IN_PROGRESS, JobStatus.FINALIZING, JobStatus.CANCELLING):
        # Served by this API, so the link is built from the address it was reached on.
        base = url_for("v1.get_partial", job_id=job.id, _external=True)
        counts = svc.jobs.counts(job.id)
        return {
            "job_id": job.id,
            "status": job.status.value,
            "partial": True,
            "results_url": f"{base}?kind=results",
            "errors_url": f"{base}?kind=errors",
            "expires_at": None,
            "stats": {"total": job.total, "successful": counts.completed, "failed": counts.failed},
        }
    details: dict[str, Any] = {"job_id": job.id, "status": job.status.value}
    if job.errors:
        details["errors"] = job.errors[:10]
    raise ServiceError(ErrorType.CONFLICT, f"job is {job.status.value}; it has no results yet", details)


@bp.get("/batch/<job_id>/partial")
@audited("results_partial")
@bp.arguments(PartialQuerySchema, location="query")
@bp.response(200, {"type": "string"}, content_type=JSONL, description="the finished lines, as JSONL")
@bp.error(404, "no such job (or another tenant's)")
def get_partial(query: dict[str, Any], job_id: str) -> Response:
    """Stream the lines finished so far (`kind`: the results or the error lines):
    complete JSON lines, never a torn one."""
    job = visible_job(job_id)
    lines = finished_lines(services().storage, job, successes=query["kind"] == "results")
    return Response(lines, mimetype=JSONL)


@bp.post("/batch/<job_id>/retry")
@audited("retry")
@requires(Role.SUBMITTER)
@bp.arguments(RetryQuerySchema, location="query")
@bp.response(202, BatchRetrySchema, description="the re-drive (scope=job), or the new retry job (failed_requests)")
@bp.alt_response(200, schema=BatchRetrySchema, description="scope=failed_requests asked again: the same retry job")
@bp.error(404, "no such job (or another tenant's)")
@bp.error(409, "the job has ended (scope=job), or has no failed requests to retry")
def retry_batch(query: dict[str, Any], job_id: str) -> tuple[dict[str, Any], int]:
    """Re-drive what a job is missing (lost shards, a lost finalize): the same
    as the sweeper does for stalled jobs, now, for this one job. With
    scope=failed_requests: a new job of only the failed requests of a finished one."""
    svc = services()
    try:
        job = visible_job(job_id)
    except JobNotFound:
        if svc.jobs.exists(job_id) or not is_job_id(job_id):
            raise
        # Redis lost it: storage still knows it, under the caller's tenant (an
        # admin may name another with ?tenant=), or this is a 404 too.
        tenant = visible_tenant() or query.get("tenant", current_key().tenant)
        job = rebuild_job(svc, job_id, tenant)
    if query["scope"] == "failed_requests":
        return _retry_failed_requests(svc, job)
    if job.status.terminal:
        raise ServiceError(ErrorType.CONFLICT, f"job is {job.status.value}; nothing to retry", {"job_id": job_id})
    plan = plan_redrive(svc, job)
    # One re-drive at a time however many ask: the others learn it is under way.
    claimed = plan.step != "none" and claim_redrive(svc, job_id)
    if claimed:
        current_app.extensions["celery"].send_task(REDRIVE, args=[job_id, True], queue=svc.settings.cpu_queue)
    body = {"job_id": job_id, "status": job.status.value, "step": plan.step, "shards": plan.shards, "sent": claimed}
    return body, 202


def _retry_failed_requests(svc: Services, job: Job) -> tuple[dict[str, Any], int]:
    """A new job of the same model holding only the failed requests of a
    finished one (metadata.retry_of names it); asked again before it ends, the same one."""
    retry = retry_failed_requests(svc, job, enqueue_prepare)
    body = {"job_id": retry.job_id, "status": retry.status, "retry_of": job.id, "requests": retry.requests}
    return body, 202 if retry.created else 200


@bp.post("/batch/<job_id>/cancel")
@audited("cancel")
@requires(Role.SUBMITTER)
@bp.response(200, BatchJobSchema, description="the job, cancelling (or cancelled, if it had not started)")
@bp.error(404, "no such job (or another tenant's)")
@bp.error(409, "the job has already ended")
def cancel_batch(job_id: str) -> dict[str, Any]:
    """Cancel a job: running shards stop at their next checkpoint; what finished is kept."""
    svc = services()
    return job_view(svc, cancel_job(svc, visible_job(job_id).id))


@bp.get("/downloads/<token>")
@audited("download")
@bp.doc(security=[])
@bp.response(200, {"type": "string"}, content_type=JSONL, description="the file (Content-Disposition names it)")
@bp.error(403, "the link's signature is wrong or it has expired")
@bp.error(404, "the object is gone, or downloads are served by the object store")
def download(token: str) -> Response:
    """Serves signed links of the local-directory storage backend."""
    storage = services().storage
    if not isinstance(storage, LocalStorage):
        raise ServiceError(ErrorType.NOT_FOUND, "downloads are served by the object store")
    try:
        key, name = storage.verify_download_token(token)
    except InvalidDownloadToken as exc:
        raise ServiceError(ErrorType.FORBIDDEN, str(exc)) from None
    try:
        size = storage.stat(key).size
    except ObjectNotFound:
        raise ServiceError(ErrorType.NOT_FOUND, "the object of this link no longer exists") from None

    def chunks():
        with storage.open(key) as stream:
            while chunk := stream.read(256 * 1024):
                yield chunk

    filename = name or key.rsplit("/", 1)[-1]
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(size)}
    return Response(chunks(), mimetype=JSONL, headers=headers)
