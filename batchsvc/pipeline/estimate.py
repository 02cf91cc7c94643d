"""Dry runs: what a submission would cost, without running or keeping it.

`start_estimate` (the API) checks the submission as `submit_job` would, stores
an upload where the cpu worker can read it, and records a queued estimate.
`run_estimate` (the cpu worker) validates the file as prepare would, counts
prompt tokens with the model's tokenizer, counts the requests that reuse would
answer, and turns measured rates and the queue ahead into a duration and a
cost. It deletes the input when done. The estimate itself lives in Redis for
`estimate_ttl_s` (batchsvc/store/estimates.py); nothing else is left."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import IO, Any

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.inference.fingerprint import request_fingerprint
from batchsvc.inference.models import ModelSpec
from batchsvc.inference.provenance import weights_identity
from batchsvc.inference.sampling import max_tokens_for
from batchsvc.inference.tokens import prompt_tokens
from batchsvc.outbound.fetch import FetchError, fetch_input
from batchsvc.pipeline.costs import cost_of
from batchsvc.pipeline.prepare import batch_validator
from batchsvc.pipeline.reuse import reuse_index, reuse_sources
from batchsvc.pipeline.submit import CappedReader, _refuse_blocked_urls, served_model, window_seconds
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound
from batchsvc.store.estimates import new_estimate_id

log = logging.getLogger(__name__)


def start_estimate(
    svc: Services,
    *,
    tenant: str,
    model: str,
    enqueue: Callable[[str], None],
    input_url: str | None = None,
    upload: IO[bytes] | None = None,
    metadata: dict[str, Any] | None = None,
    completion_window: str | None = None,
    reuse: str | None = None,
    reuse_from: list[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    if (input_url is None) == (upload is None):
        raise ServiceError(
            ErrorType.VALIDATION,
            "give exactly one of input_file_url or file",
            {"fields": {"input_file_url": ["give this or a file, not both"]}},
        )
    _refuse_blocked_urls(svc, input_file_url=input_url)
    served_model(svc, model)
    window_s = None
    if completion_window is not None:
        window_s = window_seconds(completion_window, svc.settings.max_completion_window_s)
    sources = reuse_sources(
        svc, tenant=tenant, model=model, metadata=metadata or {}, reuse=reuse, reuse_from=reuse_from, force=force
    )
    estimate_id = new_estimate_id()
    key = layout.estimate_input_key(tenant, estimate_id)
    if upload is not None:
        svc.storage.put_stream(key, CappedReader(upload, svc.settings.max_file_bytes), "application/jsonl")  # type: ignore[arg-type]
    record = {
        "estimate_id": estimate_id,
        "object": "batch.estimate",
        "dry_run": True,
        "status": "queued",
        "tenant": tenant,
        "model": model,
        "input_url": input_url,
        "completion_window": completion_window,
        "completion_window_s": window_s,
        "reuse_from": sources,
        "created_at": time.time(),
    }
    svc.estimates.save(estimate_id, record, svc.settings.estimate_ttl_s)
    try:
        enqueue(estimate_id)
    except Exception as exc:
        svc.estimates.delete(estimate_id)
        svc.storage.delete(key)
        raise ServiceError(ErrorType.UNAVAILABLE, "the job queue is unavailable; try again later") from exc
    return record


def queue_ahead(svc: Services, model: str) -> int:
    """Requests of active jobs of `model`, of every tenant, not answered yet."""
    ahead = 0
    for job_id in svc.jobs.active_ids():
        try:
            job = svc.jobs.get(job_id)
        except LookupError:
            continue
        if job.model == model:
            ahead += max(0, (job.total or job.submitted_lines or 0) - svc.jobs.counts(job_id).done)
    return ahead


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _figures(svc: Services, spec: ModelSpec, record: dict[str, Any], to_run: int) -> dict[str, Any]:
    measured = svc.jobs.model_rate(spec.alias)
    rate = measured or spec.expected_req_per_sec
    ahead = queue_ahead(svc, spec.alias)
    run_s = to_run / rate
    total_s = (ahead + to_run) / rate
    warnings = []
    window_s = record.get("completion_window_s")
    if window_s is not None and total_s > window_s:
        warnings.append(
            f"completion_window {record['completion_window']} cannot be met: the estimate is "
            f"{_duration(total_s)} ({ahead} requests queued ahead, {to_run} to run at {rate:.1f} req/s)"
        )
    return {
        "req_per_sec": round(rate, 3),
        "rate_source": "measured" if measured else "configured",
        "queued_ahead": ahead,
        "estimated_run_seconds": round(run_s, 3),
        "estimated_seconds": round(total_s, 3),
        "estimated_completion": time.time() + total_s,
        "estimated_cost": cost_of(run_s, spec),
        "gpu_hour_price": spec.gpu_hour_price,
        "warnings": warnings,
    }


def run_estimate(svc: Services, estimate_id: str) -> dict[str, Any] | None:
    try:
        record = svc.estimates.get(estimate_id)
    except LookupError:
        return None  # deleted by its caller, or past its TTL
    if record["status"] != "queued":
        return record
    key = layout.estimate_input_key(record["tenant"], estimate_id)
    try:
        result = _count(svc, record, key)
    finally:
        svc.storage.delete(key)
    record.update(result)
    svc.estimates.save(estimate_id, record, svc.settings.estimate_ttl_s)
    log.info("estimate %s: %s", estimate_id, {k: record.get(k) for k in ("status", "requests", "reused")})
    return record


def _count(svc: Services, record: dict[str, Any], key: str) -> dict[str, Any]:
    settings = svc.settings
    spec = svc.models.get(record["model"])
    if spec is None:
        return {"status": "invalid", "errors": [{"code": "unknown_model", "message": "model is not served here"}]}
    if record.get("input_url"):
        try:
            fetch_input(settings, record["input_url"], svc.storage, key)
        except FetchError as exc:
            return {"status": "invalid", "errors": [{"code": "fetch_failed", "message": str(exc), "line": None}]}
    validator = batch_validator(settings, spec, None)
    weights = weights_identity(spec)
    tokens = run_tokens = reused = max_output = 0
    try:
        source = svc.storage.open(key)
    except ObjectNotFound:
        return {
            "status": "invalid",
            "errors": [{"code": "input_missing", "message": "the input is gone", "line": None}],
        }
    with source as stream, reuse_index(svc, record["tenant"], record["reuse_from"]) as reusable:
        for request in validator.iter_valid(stream):
            if validator.report.error_count:
                continue  # a bad file is refused whole: keep validating, stop counting
            count = prompt_tokens(spec, request.url, request.body)
            tokens += count
            if reusable.answer(request_fingerprint(spec, weights, request.url, request.body)) is not None:
                reused += 1
            else:
                run_tokens += count
                max_output += max_tokens_for(request.body, spec)
    report = validator.report
    if not report.ok:
        return {"status": "invalid", "errors": [e.to_dict() for e in report.errors], "error_count": report.error_count}
    to_run = report.valid - reused
    return {
        "status": "done",
        "requests": report.valid,
        "reused": reused,
        "to_run": to_run,
        "prompt_tokens": tokens,
        "prompt_tokens_to_run": run_tokens,
        "max_output_tokens": max_output,
        **_figures(svc, spec, record, to_run),
    }
