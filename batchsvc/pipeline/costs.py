"""Usage and cost of jobs, and the cost table of `batchsvc report costs`.

A job's GPU time is its engine-seconds: how long its shards held the engine,
summed over shards (a worker runs one shard at a time on its one GPU). Its cost
is that time at the model's `gpu_hour_price` (configs/models.yaml), fixed when
the job finishes. Tokens count what this job computed: reused answers cost
nothing and count in `reused`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchsvc.inference.models import ModelSpec
from batchsvc.services import Services
from batchsvc.store.jobs import Counts, Job, JobStatus

# The seed's reference workload: Aris's candidates, rescored each night.
REFERENCE_REQUESTS = 170_000


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    cached_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def job_usage(job: Job, counts: Counts) -> Usage:
    """Exact once finalize has merged the outputs; before that, the shards' progress
    (which does not count cached tokens)."""
    if job.stats is not None:
        s = job.stats
        return Usage(int(s.get("prompt_tokens", 0)), int(s.get("cached_tokens", 0)), int(s.get("completion_tokens", 0)))
    return Usage(counts.prompt_tokens, 0, counts.completion_tokens)


def cost_of(engine_seconds: float, spec: ModelSpec | None) -> float | None:
    if spec is None or spec.gpu_hour_price is None:
        return None
    return round(engine_seconds / 3600 * spec.gpu_hour_price, 6)


@dataclass
class ModelCosts:
    model: str
    jobs: int = 0
    requests: int = 0  # computed by the engine (reused ones are free and not counted)
    reused: int = 0
    engine_seconds: float = 0.0
    cost: float = 0.0
    gpu_hour_price: float | None = None

    def row(self) -> dict[str, Any]:
        rate = self.requests / self.engine_seconds if self.engine_seconds > 0 else None
        hours = REFERENCE_REQUESTS / rate / 3600 if rate else None
        price = self.gpu_hour_price
        return {
            "model": self.model,
            "jobs": self.jobs,
            "requests": self.requests,
            "reused": self.reused,
            "engine_seconds": round(self.engine_seconds, 3),
            "req_per_sec": round(rate, 3) if rate else None,
            "hours_for_170k": round(hours, 4) if hours is not None else None,
            "cost_for_170k": round(hours * price, 4) if hours is not None and price is not None else None,
            "gpu_hour_price": price,
            "cost": round(self.cost, 6),
        }


def cost_report(svc: Services, tenant: str | None, since: float | None = None) -> list[dict[str, Any]]:
    """One row per model over the completed jobs of `tenant` (all tenants for
    None) created at or after `since`. The rate is measured: requests the engine
    computed per engine-second."""
    by_model: dict[str, ModelCosts] = {}
    for job in svc.jobs.newest(tenant=tenant):
        if since is not None and job.created_at < since:
            break  # the index is newest first: the rest is older
        if job.status is not JobStatus.COMPLETED or not job.stats:
            continue
        spec = svc.models.get(job.model)
        row = by_model.setdefault(job.model, ModelCosts(job.model))
        row.gpu_hour_price = spec.gpu_hour_price if spec else None
        row.jobs += 1
        row.requests += int(job.stats.get("engine_requests", 0))
        row.reused += int(job.stats.get("reused", 0))
        row.engine_seconds += float(job.stats.get("engine_seconds", 0.0))
        row.cost += float(job.stats.get("cost") or 0.0)
    return _rows(by_model)


def _rows(by_model: dict[str, ModelCosts]) -> list[dict[str, Any]]:
    return [by_model[m].row() for m in sorted(by_model)]
