"""Dry runs in the pipeline's plain functions (instant engine): the counts a
real run would see, and nothing left behind."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest

from batchsvc.errors import ServiceError
from batchsvc.pipeline.estimate import run_estimate, start_estimate
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from tests.conftest import make_settings
from tests.unit.test_reuse import MODEL, lines, run_job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, shard_size=4)


def estimate(svc: Services, data: bytes, **fields: object) -> dict:
    queued: list[str] = []
    record = start_estimate(svc, tenant="default", model=MODEL, upload=BytesIO(data), enqueue=queued.append, **fields)  # type: ignore[arg-type]
    assert queued == [record["estimate_id"]] and record["status"] == "queued"
    done = run_estimate(svc, record["estimate_id"])
    assert done is not None
    return done


def leftovers(svc: Services) -> list[str]:
    return [i.key for i in svc.storage.list(layout.tenant_prefix("default")) if "/estimates/" in i.key]


def test_a_dry_run_counts_what_the_real_run_then_counts_and_keeps_nothing(services: Services) -> None:
    dry = estimate(services, lines(10))
    assert (dry["status"], dry["requests"], dry["reused"], dry["to_run"]) == ("done", 10, 0, 10)
    assert dry["max_output_tokens"] == 10 * 8
    assert dry["estimated_seconds"] > 0 and dry["rate_source"] == "configured" and dry["warnings"] == []
    assert leftovers(services) == []  # the input is deleted once counted
    assert services.jobs.list_ids(tenant="default") == []  # no job

    real = run_job(services, lines(10), metadata={"job_name": "n"})
    assert real.stats and dry["prompt_tokens"] == real.stats["prompt_tokens"]

    again = estimate(services, lines(10), metadata={"job_name": "n"}, reuse="latest")
    assert (again["reused"], again["to_run"], again["prompt_tokens_to_run"]) == (10, 0, 0)
    assert again["rate_source"] == "measured"  # the real run measured the model's rate


def test_a_bad_file_is_invalid_as_a_submission_would_be(services: Services) -> None:
    dry = estimate(services, lines(3) + b"{not json\n")
    assert dry["status"] == "invalid" and dry["errors"][0]["line"] == 4
    assert leftovers(services) == []


def test_a_window_the_estimate_cannot_meet_is_warned_about(services: Services) -> None:
    dry = estimate(services, lines(20), completion_window="1s")  # 20 requests at the configured 1000 req/s fit...
    assert dry["warnings"] == []
    services.jobs.record_model_rate(MODEL, 2.0)  # ...at a measured 2 req/s they do not
    slow = estimate(services, lines(20), completion_window="1s")
    assert len(slow["warnings"]) == 1 and "completion_window 1s cannot be met" in slow["warnings"][0]


def test_a_dry_run_is_checked_as_a_submission(services: Services) -> None:
    with pytest.raises(ServiceError) as unknown:
        start_estimate(services, tenant="default", model="nope", upload=BytesIO(lines(1)), enqueue=print)
    assert "unknown model" in unknown.value.message
    with pytest.raises(ServiceError):
        start_estimate(services, tenant="default", model=MODEL, upload=BytesIO(lines(1)), enqueue=print, reuse="latest")
