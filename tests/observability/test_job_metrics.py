"""After one real job, Prometheus (scraping the API under gunicorn and each Celery
worker) holds the completed job, the request rate, the engine's figures and the
answer quality, and the quality figures agree with the job's stats and results."""

from __future__ import annotations

import orjson
from jsonschema import validators

from tests.observability.conftest import FinishedJob, Watched


def one(result: list[dict]) -> float:
    return float(result[0]["value"][1])


def total(watched: Watched, expr: str) -> float:
    result = watched.query(f"sum({expr})")
    return one(result) if result else 0.0


def expected_quality(job: FinishedJob) -> tuple[int, int, dict[str, int]]:
    """Schema validity and the recommendation distribution, computed here from the results."""
    by_id = {r["custom_id"]: r for r in job.requests}
    checked = valid = 0
    answers: dict[str, int] = {}
    for line in job.results:
        schema = by_id[line["custom_id"]]["body"]["response_format"]["json_schema"]["schema"]
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        checked += 1
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            continue
        valid += validators.validator_for(schema)(schema).is_valid(answer)
        if isinstance(answer, dict) and "recommendation" in answer:
            answers[answer["recommendation"]] = answers.get(answer["recommendation"], 0) + 1
    return checked, valid, answers


def test_the_job_record_and_results_carry_the_quality_stats(watched: Watched, finished_job: FinishedJob) -> None:
    checked, valid, answers = expected_quality(finished_job)
    assert checked == len(finished_job.requests) == 24
    quality = finished_job.body["quality"]
    assert quality == {
        "schema_checked": checked,
        "schema_valid": valid,
        "schema_invalid": checked - valid,
        "answer_field": "recommendation",
        "answers": quality["answers"],
    }
    assert quality["answers"] == answers and sum(answers.values()) > 0
    results = watched.stack.client.get(f"/v1/batch/{finished_job.id}/results").get_json()
    assert results["stats"]["quality"] == quality


def test_prometheus_sees_the_completed_job_the_request_rate_and_the_quality(
    watched: Watched, finished_job: FinishedJob
) -> None:
    _, valid, answers = expected_quality(finished_job)
    watched.wait_for('batchsvc_jobs_finished_total{status="completed", model="tiny-random"} >= 1')
    watched.wait_for('sum(rate(batchsvc_http_requests_total{route!="/metrics"}[5m])) > 0')
    watched.wait_for('batchsvc_http_request_duration_seconds_count{route="/v1/batch/<job_id>"}')
    # Counted by the CPU worker when it finalized the job: the same numbers as the job's stats.
    watched.wait_for(f'sum(batchsvc_structured_outputs_total{{model="tiny-random"}}) == {len(finished_job.requests)}')
    assert total(watched, 'batchsvc_structured_outputs_total{model="tiny-random", valid="true"}') == valid
    for value, count in answers.items():
        labels = f'model="tiny-random", field="recommendation", value="{value}"'
        assert total(watched, f"batchsvc_answers_total{{{labels}}}") == count


def test_the_api_counts_every_gunicorn_worker(watched: Watched, finished_job: FinishedJob) -> None:
    # Both workers answered status polls (each leaves its own multiprocess files) ...
    metrics_dir = watched.stack.log_dir / "web-metrics"
    pids = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 2, pids
    # ... and one scrape of either sums them: every poll this test made is counted once.
    watched.wait_for(
        f'sum(batchsvc_http_requests_total{{method="GET", route="/v1/batch/<job_id>"}}) == {finished_job.status_polls}'
    )


def test_the_workers_export_engine_shard_and_host_figures(watched: Watched, finished_job: FinishedJob) -> None:
    n = len(finished_job.requests)
    watched.wait_for(f'sum(batchsvc_engine_requests_total{{model="tiny-random", outcome="success"}}) == {n}')
    output_tokens = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in finished_job.results)
    assert total(watched, 'batchsvc_engine_output_tokens_total{model="tiny-random"}') == output_tokens
    assert total(watched, 'batchsvc_engine_request_duration_seconds_count{model="tiny-random"}') == n
    shards = 2  # 24 requests in shards of 16
    assert total(watched, 'batchsvc_shard_duration_seconds_count{model="tiny-random"}') == shards
    assert total(watched, 'batchsvc_shard_attempts_total{model="tiny-random"}') == shards
    assert total(watched, 'batchsvc_checkpoint_writes_total{model="tiny-random"}') >= shards
    assert total(watched, 'batchsvc_engine_load_seconds{model="tiny-random"}') > 0
    # vLLM's own statistics, read from the warm engine
    watched.wait_for('batchsvc_engine_kv_cache_usage_ratio{model="tiny-random"}')
    watched.wait_for('batchsvc_engine_requests_waiting{model="tiny-random"}')
    # Each worker's start is counted in Redis and exported by the API.
    started = {r["metric"]["worker"] for r in watched.query("batchsvc_worker_starts_total")}
    assert started == {watched.stack.cpu.nodename, watched.stack.llm.nodename}
    for target in ("cpu", "llm"):
        watched.wait_for(f'batchsvc_system_memory_used_ratio{{role="{target}"}} > 0')
        # No GPU on this machine: the workers say so, and export no GPU series.
        assert one(watched.query(f'batchsvc_gpu_count{{role="{target}"}}')) == 0
    assert watched.query("batchsvc_gpu_utilization_ratio") == []
