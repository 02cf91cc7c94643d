"""The batch pipeline as Celery tasks: prepare -> chord(shard...) -> finalize -> webhook.

Tasks take ids, never payloads, and every one is safe to run twice."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import timedelta

from celery import chord

from batchsvc import metrics
from batchsvc.access import DEFAULT_TENANT
from batchsvc.inference import memory_budget
from batchsvc.outbound import webhooks
from batchsvc.outbound.netguard import Allowlist
from batchsvc.pipeline.backup import backup
from batchsvc.pipeline.campaigns import submit_run
from batchsvc.pipeline.estimate import run_estimate
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.leases import redrive_expired
from batchsvc.pipeline.prepare import answer_unstarted, prepare_job
from batchsvc.pipeline.recovery import Redrive, redrive, stalled_jobs
from batchsvc.pipeline.retention import expire_job_data
from batchsvc.pipeline.shards import ShardInterrupted, finish_reused_shards, finished_shard, give_up_shard, run_shard
from batchsvc.services import Services, current_services
from batchsvc.settings import get_settings
from batchsvc.storage import layout
from batchsvc.store.jobs import Job, JobStatus, job_priority
from batchsvc.store.tenants import webhook_secrets
from tasks.base import TRANSIENT, BatchTask
from tasks.celery_app import create_celery
from tasks.leasing import heartbeat, resend, shutting_down
from tasks.names import (
    BACKUP,
    ESTIMATE,
    FINALIZE,
    LEASES,
    PREPARE,
    REDRIVE,
    RESCORE,
    RETENTION,
    SHARD,
    SWEEP,
    WEBHOOK,
    celery_priority,
    llm_queue,
    queue_keys,
)
from tasks.schedule import rescoring_entry, scheduled_slot

log = logging.getLogger(__name__)

# The worker's one Celery app (`celery -A tasks.worker`); the web app builds its own in create_app.
app = create_celery(get_settings())


def start_chord(job_id: str, shard_indexes: list[int]) -> None:
    """One shard task per index on the model's queue, then finalize."""
    svc = current_services()
    job = svc.jobs.get(job_id)
    queue = llm_queue(svc.settings, job.model)
    priority = celery_priority(job_priority(job.metadata))
    header = [shard.si(job_id, i, job.tenant).set(queue=queue, priority=priority) for i in shard_indexes]
    chord(header)(finalize.s(job_id).set(queue=svc.settings.cpu_queue, priority=priority))


def send_redrive(plan: Redrive) -> None:
    svc = current_services()
    if plan.step == "prepare":
        prepare.apply_async((plan.job_id,), queue=svc.settings.cpu_queue)
    elif plan.step == "shards":
        start_chord(plan.job_id, plan.shards)
    elif plan.step == "finalize":
        finalize.apply_async(([], plan.job_id), queue=svc.settings.cpu_queue)


def queue_depth(job: Job) -> int:
    """Messages waiting in the queue this job's next step would be in."""
    svc = current_services()
    queue = llm_queue(svc.settings, job.model) if job.status is JobStatus.IN_PROGRESS else svc.settings.cpu_queue
    return _waiting_in(queue)


def _waiting_in(queue: str) -> int:
    """Messages waiting in `queue`, of every priority."""
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        return sum(int(client.llen(key)) for key in queue_keys(queue))


@app.task(name=PREPARE, bind=True, max_retries=10, fails_job=True)
def prepare(self: BatchTask, job_id: str) -> int:
    svc = current_services()
    with heartbeat(self, job_id):
        try:
            manifest = prepare_job(svc, job_id)
            if manifest is None:
                return 0
            # Only the delivery that moves the job to in_progress starts the chord.
            moved = svc.jobs.transition(
                job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING}, in_progress_at=time.time()
            )
            if moved:
                to_run = finish_reused_shards(svc, manifest)  # all answers reused: no engine needed
                if to_run:
                    start_chord(job_id, to_run)
                else:
                    finalize.apply_async(([], job_id), queue=svc.settings.cpu_queue)
            elif svc.jobs.get(job_id).status is JobStatus.CANCELLING:
                # Cancelled while it was validated: answered here, no LLM worker involved.
                answer_unstarted(svc, manifest)
                finalize.apply_async(([], job_id), queue=svc.settings.cpu_queue)
            return len(manifest.shards)
        except TRANSIENT as exc:
            raise self.retry_outage(exc) from None


@app.task(name=SHARD, bind=True, max_retries=None, soft_time_limit=get_settings().shard_soft_time_limit_s)
def shard(self: BatchTask, job_id: str, index: int, tenant: str = DEFAULT_TENANT) -> dict:
    """`tenant` rides in the message so that a refund can be written to storage
    (under the tenant's prefix) while Redis, which knows the job, is down."""
    svc = current_services()
    job = layout.JobKey(tenant, job_id)
    cap = svc.settings.shard_max_attempts
    counted, attempt = False, 0
    delivery = self.request.delivery_info or {}
    redelivered = bool(delivery.get("redelivered") or getattr(self.request, "redelivered", False))
    model = (delivery.get("routing_key") or "").removeprefix(f"{svc.settings.llm_queue_prefix}.")
    metrics.SHARD_REDELIVERIES.labels(model).inc(int(redelivered))  # a 0 too: the series exists from the start
    # The lease is held across the retries below: one with a countdown waits in a
    # worker's memory, and a worker dying then must cost no more than one dying mid-run.
    with heartbeat(self, job_id, index) as beat:
        try:
            finished = finished_shard(svc.storage, job, index)
            if finished is not None:
                # A duplicate delivery (a retry, a re-drive) of a shard that is done: harmless,
                # and no start of it either.
                log.info("shard %s/%d is already finished; duplicate delivery ignored", job_id, index)
                return finished.to_dict()
            attempt = svc.jobs.shard_attempt(job_id, index)
            counted = True
            attempt -= _refunds(svc, job, index)
            if attempt > cap:
                # Earlier deliveries died with their worker (OOM, a crash in the engine,
                # the hung-engine watchdog): answer the rest with error lines instead of
                # killing more workers.
                log.error("shard %s/%d started %d times; giving up its remaining requests", job_id, index, attempt - 1)
                return give_up_shard(svc, job_id, index, f"shard failed {attempt - 1} times").to_dict()
            # A worker over its memory budget exits: its lease lapses at once, not after lease_ttl_s.
            # A shard that has compiled grammars for grammar_yield_after_s makes way for one
            # waiting in its queue (ShardInterrupted below); asked only then, before a compile.
            queue = delivery.get("routing_key") or llm_queue(svc.settings, svc.jobs.get(job_id).model)
            with memory_budget.exposed(lambda rss_mb, budget_mb: beat.lapse()):
                return run_shard(
                    svc,
                    job_id,
                    index,
                    progress=beat.progress,
                    interrupted=shutting_down,
                    waiting=lambda: _waiting_in(queue) > 0,
                ).to_dict()
        except ShardInterrupted:
            # The worker is shutting down (SIGTERM), or the shard yields it to a shard that
            # waits: the checkpoint is written, so the shard goes back to the end of its queue
            # now, as the same message. Not the shard's fault: the start does not count.
            _refund(svc, job, index)
            raise self.retry(countdown=0) from None
        except TRANSIENT as exc:
            # Storage or Redis blinked: not the shard's fault, so this start does not
            # count, and the checkpoint keeps the work done so far.
            if counted:
                _refund(svc, job, index)
            raise self.retry_outage(exc) from None
        except Exception as exc:
            # The engine failed on this shard (a crash, a bug, a time limit). Try
            # again up to the cap; the start after that gives up (above).
            log.warning("shard %s/%d attempt %d of %d failed: %r", job_id, index, attempt, cap, exc)
            raise self.retry(exc=exc, countdown=_backoff(attempt)) from None


def _refund(svc: Services, job: layout.JobKey, index: int) -> None:
    """Take back a start an outage ended: in Redis, or, when Redis is what is
    down, as a marker in storage that the next start subtracts."""
    try:
        svc.jobs.shard_attempt(job.job_id, index, -1)
    except TRANSIENT:
        with contextlib.suppress(*TRANSIENT):
            marker = layout.shard_refunds_prefix(job, index) + uuid.uuid4().hex
            svc.storage.put_bytes(marker, b"", "application/octet-stream")


def _refunds(svc: Services, job: layout.JobKey, index: int) -> int:
    return sum(1 for _ in svc.storage.list(layout.shard_refunds_prefix(job, index)))


def _backoff(attempt: int) -> float:
    return float(min(300, 2**attempt))


@app.task(name=FINALIZE, bind=True, max_retries=10, fails_job=True)
def finalize(self: BatchTask, shard_results: list[dict], job_id: str) -> str:
    svc = current_services()
    with heartbeat(self, job_id):
        try:
            job = finalize_job(svc, job_id)
            # One webhook per job, even when finalize runs twice.
            if job.webhook_url and job.status.terminal and svc.jobs.set_once(job_id, "webhook_status", "pending"):
                try:
                    webhook.apply_async((job_id,), queue=svc.settings.cpu_queue)
                except Exception:
                    # Not queued: release the claim so the retry of this finalize queues it.
                    svc.jobs.update(job_id, webhook_status=None)
                    raise
            return job.status.value
        except TRANSIENT as exc:
            raise self.retry_outage(exc) from None


@app.task(name=WEBHOOK, bind=True, max_retries=None)
def webhook(self: BatchTask, job_id: str) -> str:
    svc = current_services()
    settings = svc.settings
    job = svc.jobs.get(job_id)
    if not job.webhook_url or job.webhook_status == "delivered":
        return job.webhook_status or "none"
    results_url = None
    if job.results_key:
        results_url = svc.storage.presigned_get_url(
            job.results_key, timedelta(seconds=settings.result_link_ttl_s), download_name=f"{job_id}-results.jsonl"
        )
    body = webhooks.payload(job_id, job.status.value, job.stats, results_url)
    msg_id = webhooks.delivery_id(job_id, job.status.value)
    try:
        webhooks.deliver(
            job.webhook_url,
            body,
            msg_id,
            timeout=settings.webhook_timeout_s,
            secrets=webhook_secrets(svc.tenants.get(job.tenant), settings),
            allow=Allowlist.parse(settings.outbound_allowlist),
        )
    except webhooks.WebhookBlocked as exc:
        # The URL is refused (private address, redirect): retrying cannot help.
        log.warning("webhook for %s refused, not retried: %s", job_id, exc)
        svc.jobs.update(job_id, webhook_status="failed")
        return "failed"
    except webhooks.WebhookError as exc:
        attempt = self.request.retries + 1
        if attempt >= settings.webhook_max_attempts:
            # A receiver that keeps failing never fails the job.
            log.warning("webhook for %s gave up after %d attempts: %s", job_id, attempt, exc)
            svc.jobs.update(job_id, webhook_status="failed")
            return "failed"
        delay = webhooks.backoff(attempt, settings.webhook_backoff_s, settings.webhook_backoff_max_s)
        log.info("webhook for %s attempt %d failed (%s); retry in %.0fs", job_id, attempt, exc, delay)
        raise self.retry(countdown=delay, exc=exc) from None
    svc.jobs.update(job_id, webhook_status="delivered")
    return "delivered"


@app.task(name=RESCORE, max_retries=10)
def rescore(name: str) -> str | None:
    """Beat's nightly rescoring: submit this tick's run of the entry, once."""
    svc = current_services()
    entry = rescoring_entry(svc.settings, name)
    job = submit_run(
        svc,
        entry,
        scheduled_slot(entry),
        enqueue=lambda job_id: prepare.apply_async((job_id,), queue=svc.settings.cpu_queue),
    )
    return job.id if job else None


@app.task(name=SWEEP, max_retries=0)
def sweep() -> list[str]:
    """Beat, every sweep_interval_s: re-drive jobs whose messages were lost."""
    svc = current_services()
    redriven = []
    for job in stalled_jobs(svc, now=time.time(), stall_after_s=svc.settings.stall_after_s, queue_depth=queue_depth):
        plan = redrive(svc, job.id, send_redrive)
        log.warning("sweeper re-drove job %s (%s %s)", job.id, plan.step, plan.shards or "")
        redriven.append(job.id)
    return redriven


@app.task(name=LEASES, bind=True, max_retries=0)
def check_leases(self: BatchTask) -> list[str]:
    """Beat, every lease_check_interval_s: send again the steps whose worker died or froze."""
    redriven = redrive_expired(current_services(), lambda lease: resend(self.app, lease))
    return [lease.subject for lease in redriven]


@app.task(name=REDRIVE)
def redrive_job(job_id: str, claimed: bool = False) -> dict:
    """The operator's retry of one job (also reachable from Flower by name);
    `claimed`: the API already holds the job's re-drive claim for this retry."""
    plan = redrive(current_services(), job_id, send_redrive, claimed=claimed)
    return {"job_id": plan.job_id, "step": plan.step, "shards": plan.shards}


@app.task(name=RETENTION)
def retention() -> list[str]:
    """Beat, hourly: delete the objects of finished jobs past retention_s."""
    return expire_job_data(current_services())


# The estimate is kept in the job store (with a TTL), not as a task result: a dry run leaves nothing else.
@app.task(name=ESTIMATE, ignore_result=True)
def estimate(estimate_id: str) -> None:
    """A dry run: validate, count tokens and reuse, estimate time and cost."""
    run_estimate(current_services(), estimate_id)


@app.task(name=BACKUP)
def backup_state() -> str:
    """Beat, daily: a snapshot of the job state in storage (`batchsvc admin backup`)."""
    made = backup(current_services())
    log.info("backup %s: %d jobs, %d records", made.key, made.jobs, made.keys)
    return made.key
