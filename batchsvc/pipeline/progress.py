"""Progress, throughput and ETA arithmetic, kept pure so it is tested without Redis."""

from __future__ import annotations

from dataclasses import dataclass

from batchsvc.store.jobs import Counts


@dataclass(frozen=True)
class Throughput:
    req_per_sec: float | None
    tokens_per_sec: float | None
    estimated_remaining: float | None  # seconds


def percent(done: int, total: int | None) -> float:
    if not total:
        return 0.0
    return round(min(100.0, 100.0 * done / total), 2)


def throughput(counts: Counts, total: int | None, started_at: float | None, now: float) -> Throughput:
    """Rates since the first shard started; the ETA assumes the rate holds."""
    if started_at is None or now <= started_at or counts.done == 0:
        return Throughput(None, None, None)
    elapsed = now - started_at
    rate = counts.done / elapsed
    remaining = None
    if total is not None:
        remaining = round(max(0, total - counts.done) / rate, 1)
    return Throughput(round(rate, 3), round(counts.completion_tokens / elapsed, 1), remaining)


def estimate_completion(
    *,
    now: float,
    total: int | None,
    counts: Counts,
    started_at: float | None,
    fallback_req_per_sec: float,
) -> float | None:
    """Wall-clock estimate of when the job finishes.

    Uses the job's own rate once it has one, else the model's last measured (or
    configured) rate; None while the number of requests is still unknown.
    """
    if total is None:
        return None
    measured = throughput(counts, total, started_at, now)
    if measured.estimated_remaining is not None:
        return now + measured.estimated_remaining
    if fallback_req_per_sec <= 0:
        return None
    return now + max(0, total - counts.done) / fallback_req_per_sec
