"""What the API exports at scrape time from Redis: queues, active jobs, worker starts.

Read at each scrape rather than counted in a process, so every API process
reports the same figures and they survive restarts. Per-job series exist only
for active jobs, so their number stays bounded by the tenants' quotas.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchsvc.errors import JobNotFound
from batchsvc.services import Services
from batchsvc.store.jobs import JobStatus


def _starts_key(svc: Services) -> str:
    return f"{svc.settings.redis_prefix}:worker_starts"


def record_worker_start(svc: Services, worker: str) -> int:
    """Count a start of a worker by name, in Redis: a restart loop is seen even when
    the worker never lives long enough to be scraped."""
    return int(svc.jobs.redis.hincrby(_starts_key(svc), worker, 1))


class JobStateCollector(Collector):
    def __init__(self, svc: Services, queue_depths: Callable[[], dict[str, int]]):
        self.svc = svc
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("batchsvc_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        for queue, count in self.queue_depths().items():
            depth.add_metric([queue], count)
        yield depth
        yield GaugeMetricFamily(
            "batchsvc_jobs_stored", "Jobs the job index holds, of every tenant", value=self.svc.jobs.count()
        )
        yield from self._jobs(time.time())
        starts = CounterMetricFamily("batchsvc_worker_starts", "Starts of a Celery worker, by name", labels=["worker"])
        for name, count in sorted(self.svc.jobs.redis.hgetall(_starts_key(self.svc)).items()):
            starts.add_metric([name.decode()], int(count))
        yield starts

    def _jobs(self, now: float) -> Iterator[Metric]:
        jobs = self.svc.jobs
        per_job = ["job_id", "model", "tenant", "status"]
        active = GaugeMetricFamily("batchsvc_jobs_active", "Jobs not yet ended", labels=["status", "model"])
        oldest = GaugeMetricFamily(
            "batchsvc_queue_oldest_shard_age_seconds",
            "How long the oldest job with shards not yet started has been in progress (0: none waits)",
            labels=["model"],
        )
        age = GaugeMetricFamily("batchsvc_job_age_seconds", "Time since an active job was submitted", labels=per_job)
        estimate = GaugeMetricFamily(
            "batchsvc_job_estimated_seconds", "An active job's duration as estimated at submission", labels=per_job
        )
        idle = GaugeMetricFamily(
            "batchsvc_job_seconds_since_progress",
            "Time since an active job last made progress (or changed status)",
            labels=per_job,
        )
        progress = GaugeMetricFamily("batchsvc_job_progress_ratio", "Requests answered over total, 0-1", labels=per_job)
        by_status: Tally[tuple[str, str]] = Tally()
        oldest_by_model = dict.fromkeys(self.svc.models.aliases(), 0.0)  # 0: no shard waits
        for job_id in jobs.active_ids():
            try:
                job = jobs.get(job_id)
            except JobNotFound:
                continue
            if job.status.terminal:
                continue
            by_status[(job.status.value, job.model)] += 1
            labels = [job.id, job.model, job.tenant, job.status.value]
            age.add_metric(labels, now - job.created_at)
            idle.add_metric(labels, now - job.last_activity)
            if job.estimated_completion is not None:
                estimate.add_metric(labels, max(0.0, job.estimated_completion - job.created_at))
            if job.total:
                progress.add_metric(labels, min(1.0, jobs.counts(job.id).done / job.total))
            queued = job.status is JobStatus.IN_PROGRESS and job.shard_count and job.in_progress_at
            if queued and jobs.shards_started(job.id) < (job.shard_count or 0):
                waited = now - (job.in_progress_at or now)
                oldest_by_model[job.model] = max(waited, oldest_by_model.get(job.model, 0.0))
        for (status, model), count in sorted(by_status.items()):
            active.add_metric([status, model], count)
        for model, waited in sorted(oldest_by_model.items()):
            oldest.add_metric([model], waited)
        yield from (active, oldest, age, estimate, idle, progress)
