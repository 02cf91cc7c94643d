"""Progress, throughput and ETA arithmetic (batchsvc.pipeline.progress)."""

from __future__ import annotations

import pytest

from batchsvc.pipeline.progress import Throughput, estimate_completion, percent, throughput
from batchsvc.store.jobs import Counts

T0 = 1_700_000_000.0
UNKNOWN = Throughput(None, None, None)


# --- percent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(0, 10, 0.0), (5, 10, 50.0), (1, 3, 33.33), (2, 3, 66.67), (10, 10, 100.0)],
)
def test_percent(done: int, total: int, expected: float) -> None:
    assert percent(done, total) == expected


@pytest.mark.parametrize("total", [None, 0])
def test_percent_of_an_unknown_or_empty_total_is_zero(total: int | None) -> None:
    assert percent(5, total) == 0.0


def test_percent_never_exceeds_100() -> None:
    # The upload's line estimate can be below the number of requests actually counted.
    assert percent(12, 10) == 100.0


# --- throughput ------------------------------------------------------------------


def test_throughput_is_unknown_before_the_job_starts() -> None:
    assert throughput(Counts(completed=5), 10, None, T0) == UNKNOWN


def test_throughput_is_unknown_before_any_request_is_done() -> None:
    assert throughput(Counts(), 10, T0, T0 + 30) == UNKNOWN


def test_throughput_is_unknown_when_no_time_has_passed() -> None:
    assert throughput(Counts(completed=3), 10, T0, T0) == UNKNOWN


def test_throughput_rates_and_eta() -> None:
    counts = Counts(completed=30, failed=10, prompt_tokens=999, completion_tokens=800)
    rate = throughput(counts, 100, T0, T0 + 20)
    assert rate.req_per_sec == 2.0  # 40 done (failed ones count) in 20 s
    assert rate.tokens_per_sec == 40.0  # completion tokens only
    assert rate.estimated_remaining == 30.0  # 60 left at 2/s


def test_throughput_rounding() -> None:
    rate = throughput(Counts(completed=1, completion_tokens=1), 4, T0, T0 + 3)
    assert rate.req_per_sec == 0.333
    assert rate.tokens_per_sec == 0.3
    assert rate.estimated_remaining == 9.0


def test_throughput_without_a_total_has_rates_but_no_eta() -> None:
    rate = throughput(Counts(completed=10, completion_tokens=50), None, T0, T0 + 5)
    assert rate.req_per_sec == 2.0
    assert rate.tokens_per_sec == 10.0
    assert rate.estimated_remaining is None


def test_eta_is_zero_once_everything_is_done() -> None:
    assert throughput(Counts(completed=12), 10, T0, T0 + 4).estimated_remaining == 0


# --- estimate_completion ---------------------------------------------------------


def test_estimate_uses_the_fallback_rate_before_the_job_starts() -> None:
    estimate = estimate_completion(now=T0, total=100, counts=Counts(), started_at=None, fallback_req_per_sec=4.0)
    assert estimate == T0 + 25.0


def test_estimate_uses_the_fallback_rate_while_nothing_is_done() -> None:
    estimate = estimate_completion(now=T0 + 9, total=100, counts=Counts(), started_at=T0, fallback_req_per_sec=10.0)
    assert estimate == T0 + 9 + 10.0


def test_estimate_uses_the_measured_rate_once_there_is_one() -> None:
    # 20 done in 10 s = 2/s measured; the fallback (100/s) would say 0.8 s.
    estimate = estimate_completion(
        now=T0 + 10, total=100, counts=Counts(completed=20), started_at=T0, fallback_req_per_sec=100.0
    )
    assert estimate == T0 + 10 + 40.0


def test_estimate_with_fallback_counts_only_what_is_left() -> None:
    estimate = estimate_completion(
        now=T0, total=100, counts=Counts(completed=60), started_at=None, fallback_req_per_sec=10.0
    )
    assert estimate == T0 + 4.0


def test_estimate_is_unknown_while_the_total_is_unknown() -> None:
    assert (
        estimate_completion(now=T0, total=None, counts=Counts(completed=5), started_at=T0 - 5, fallback_req_per_sec=1)
        is None
    )


@pytest.mark.parametrize("fallback", [0.0, -1.0])
def test_estimate_is_unknown_without_any_rate(fallback: float) -> None:
    assert (
        estimate_completion(now=T0, total=10, counts=Counts(), started_at=None, fallback_req_per_sec=fallback) is None
    )
