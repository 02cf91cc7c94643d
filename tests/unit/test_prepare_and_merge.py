"""Prepare (validate + shard), run shards on the instant engine, and finalize (merge), on real Redis and
local storage, without Celery."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsvc.inference import outputs
from batchsvc.inference.engine import EngineRequest, EngineResult, InstantEngine
from batchsvc.inference.models import ModelSpec
from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import give_up_shard, run_shard
from batchsvc.services import Services
from batchsvc.settings import Settings
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound
from batchsvc.storage.manifest import Manifest, ShardInfo, ShardSummary
from batchsvc.store.jobs import Counts, Job, JobStatus, new_job_id
from tests.conftest import make_settings

MODEL = "instant-test"
SHARD_SIZE = 3


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Overrides the shared fixture, so `services` (and its Redis clean-up) uses these settings.
    return make_settings(tmp_path, shard_size=SHARD_SIZE)


def request_line(custom_id: str, text: str | None = None, **body: Any) -> bytes:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": text or f"score {custom_id}"}], **body},
    }
    return orjson.dumps(line)


def ids(n: int) -> list[str]:
    return [f"req-{i}" for i in range(1, n + 1)]


def submit(svc: Services, lines: Iterable[bytes]) -> str:
    """Store an input file and create its queued job, as submit_job does for an upload."""
    job_id = new_job_id()
    svc.storage.put_bytes(
        layout.input_key(layout.JobKey("default", job_id)),
        b"".join(line + b"\n" for line in lines),
        "application/jsonl",
    )
    svc.jobs.create(Job(id=job_id, model=MODEL, input_key=layout.input_key(layout.JobKey("default", job_id))))
    return job_id


def prepared(svc: Services, lines: Iterable[bytes]) -> tuple[str, Manifest]:
    job_id = submit(svc, lines)
    manifest = prepare_job(svc, job_id)
    assert manifest is not None
    # What the prepare task does once the manifest exists; finalize expects it.
    assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    return job_id, manifest


def read_jsonl(svc: Services, key: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in svc.storage.get_bytes(key).splitlines() if raw.strip()]


def custom_ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["custom_id"] for line in lines]


class RecordingEngine:
    """The instant engine, remembering what it was asked; optionally answering in reverse
    order (engines yield in completion order) or rejecting some requests."""

    def __init__(self, spec: ModelSpec, *, reverse: bool = False, reject: frozenset[str] = frozenset()):
        self.spec = spec
        self.inner = InstantEngine(spec)
        self.asked: list[str] = []
        self.reverse = reverse
        self.reject = reject

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        todo = list(requests)
        self.asked += [r.custom_id for r in todo]
        for request in reversed(todo) if self.reverse else todo:
            if request.custom_id in self.reject:
                failure = outputs.RequestFailure("context_length_exceeded", "prompt is longer than max_model_len")
                yield EngineResult(request.custom_id, None, failure=failure)
            else:
                yield from self.inner.run([request])

    def close(self) -> None:
        pass


def recorder(**options: Any) -> tuple[list[RecordingEngine], Callable[[ModelSpec], RecordingEngine]]:
    made: list[RecordingEngine] = []

    def engine_for(spec: ModelSpec) -> RecordingEngine:
        made.append(RecordingEngine(spec, **options))
        return made[-1]

    return made, engine_for


# --- prepare ---------------------------------------------------------------------


def test_prepare_cuts_the_input_into_shards_of_shard_size(services: Services) -> None:
    lines = [request_line(c) for c in ids(7)]
    job_id = submit(services, lines)

    manifest = prepare_job(services, job_id)

    assert manifest is not None
    assert manifest.total == 7
    assert manifest.model == MODEL
    assert manifest.shards == [
        ShardInfo(index=0, count=3, first_line=1),
        ShardInfo(index=1, count=3, first_line=4),
        ShardInfo(index=2, count=1, first_line=7),
    ]
    assert Manifest.load(services.storage, layout.JobKey("default", job_id)) == manifest
    job = services.jobs.get(job_id)
    assert (job.status, job.total, job.shard_count) == (JobStatus.VALIDATING, 7, 3)
    assert job.validating_at is not None


def test_shard_inputs_hold_the_requests_in_order_each_with_its_fingerprint(services: Services) -> None:
    lines = [request_line(c, temperature=0.5) for c in ids(7)]
    job_id = submit(services, lines)
    prepare_job(services, job_id)

    shard_bytes = [
        services.storage.get_bytes(layout.shard_input_key(layout.JobKey("default", job_id), i)) for i in range(3)
    ]
    shards = [[orjson.loads(raw) for raw in s.splitlines()] for s in shard_bytes]
    expected = [orjson.loads(line) for line in lines]
    assert [[(q["custom_id"], q["url"], q["body"]) for q in shard] for shard in shards] == [
        [(q["custom_id"], q["url"], q["body"]) for q in expected[a:b]] for a, b in ((0, 3), (3, 6), (6, 7))
    ]
    fingerprints = [q["fingerprint"] for shard in shards for q in shard]
    assert all(f.startswith("fp1:") for f in fingerprints)
    assert len(set(fingerprints)) == 7  # the prompts differ


def test_first_line_counts_physical_lines_past_blank_ones(services: Services) -> None:
    lines = [request_line("a"), b"", request_line("b"), request_line("c"), b"", request_line("d")]
    job_id = submit(services, lines)
    manifest = prepare_job(services, job_id)
    assert manifest is not None
    assert manifest.shards == [ShardInfo(0, 3, 1), ShardInfo(1, 1, 6)]


def test_an_exact_multiple_of_shard_size_leaves_no_empty_shard(services: Services) -> None:
    job_id = submit(services, [request_line(c) for c in ids(6)])
    manifest = prepare_job(services, job_id)
    assert manifest is not None
    assert [s.count for s in manifest.shards] == [3, 3]
    assert not services.storage.exists(layout.shard_input_key(layout.JobKey("default", job_id), 2))


def test_one_bad_line_fails_the_job_naming_the_line_and_leaves_no_shards(services: Services) -> None:
    # Line 5 is bad; the first shard (lines 1-3) is already uploaded when it is found.
    lines = [request_line(c) for c in ids(7)]
    lines[4] = orjson.dumps({"custom_id": "req-5", "method": "GET", "url": "/v1/chat/completions", "body": {}})
    job_id = submit(services, lines)

    assert prepare_job(services, job_id) is None

    job = services.jobs.get(job_id)
    assert job.status is JobStatus.FAILED
    assert [e["line"] for e in job.errors] == [5]
    assert job.error_count == 1
    assert job.finished_at is not None
    assert list(services.storage.list(layout.job_prefix(layout.JobKey("default", job_id)) + "shards/")) == []
    assert not services.storage.exists(layout.manifest_key(layout.JobKey("default", job_id)))


def test_prepare_of_a_failed_job_does_nothing(services: Services) -> None:
    job_id = submit(services, [b"not json"])
    assert prepare_job(services, job_id) is None
    assert services.jobs.get(job_id).status is JobStatus.FAILED
    assert prepare_job(services, job_id) is None
    assert services.jobs.get(job_id).error_count == 1


def test_prepare_of_a_job_with_an_unknown_model_fails_it(services: Services) -> None:
    job_id = new_job_id()
    services.jobs.create(
        Job(id=job_id, model="no-such-model", input_key=layout.input_key(layout.JobKey("default", job_id)))
    )
    assert prepare_job(services, job_id) is None
    job = services.jobs.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.errors[0]["code"] == "unknown_model"


def test_prepare_run_twice_writes_the_same_shards(services: Services) -> None:
    # A redelivered prepare (job still validating) rebuilds the same objects under the same keys.
    job_id = submit(services, [request_line(c) for c in ids(4)])
    first = prepare_job(services, job_id)
    before = {i.key: i.size for i in services.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))}
    second = prepare_job(services, job_id)
    assert first == second
    assert {i.key: i.size for i in services.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))} == before


# --- shards ----------------------------------------------------------------------


def test_run_shard_writes_one_output_line_per_request_in_input_order(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    made, engine_for = recorder(reverse=True)

    summary = run_shard(services, job_id, 0, engine_for=engine_for)

    out = read_jsonl(services, summary.output_key)
    assert custom_ids(out) == ids(3)
    assert made[0].asked == ids(3)  # the whole shard at once
    assert all(outputs.is_success(line) for line in out)
    assert (summary.count, summary.succeeded, summary.failed) == (3, 3, 0)
    raw = services.storage.get_bytes(summary.output_key)
    assert summary.sha256 == hashlib.sha256(raw).hexdigest()
    assert ShardSummary.load(services.storage, layout.JobKey("default", job_id), 0) == summary


def test_run_shard_publishes_its_progress(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    before = time.time()
    summary = run_shard(services, job_id, 0)
    counts = services.jobs.counts(job_id)
    assert counts == Counts(3, 0, summary.prompt_tokens, summary.completion_tokens)
    assert counts.completion_tokens == 9  # the instant engine says 3 tokens per choice
    started_at = services.jobs.get(job_id).started_at
    assert started_at is not None and started_at >= before


def test_an_engine_rejection_fails_that_request_alone(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    _, engine_for = recorder(reject=frozenset({"req-2"}))

    summary = run_shard(services, job_id, 0, engine_for=engine_for)

    out = read_jsonl(services, summary.output_key)
    assert custom_ids(out) == ids(3)
    assert [outputs.is_success(line) for line in out] == [True, False, True]
    assert out[1]["response"]["status_code"] == 400
    assert out[1]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert (summary.succeeded, summary.failed) == (2, 1)


def test_a_finished_shard_is_not_run_again(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    made, engine_for = recorder()
    first = run_shard(services, job_id, 0, engine_for=engine_for)
    output = services.storage.get_bytes(first.output_key)

    second = run_shard(services, job_id, 0, engine_for=engine_for)

    assert second == first
    assert len(made) == 1  # no engine was even asked for
    assert services.storage.get_bytes(first.output_key) == output


def _checkpoint(svc: Services, job_id: str, index: int, seq: int, custom_ids: list[str]) -> dict[str, bytes]:
    """A checkpoint part as run_shard writes it: one orjson line per answered request."""
    lines = {}
    for custom_id in custom_ids:
        body = outputs.completion_body(
            url=outputs.CHAT_URL,
            job_id=job_id,
            custom_id=custom_id,
            model=MODEL,
            choices=[outputs.Choice(0, "from-checkpoint", "stop", 5)],
            prompt_tokens=10,
        )
        lines[custom_id] = orjson.dumps(outputs.success_line(job_id, custom_id, body))
    data = b"\n".join(lines.values()) + b"\n"
    svc.storage.put_bytes(
        layout.shard_part_key(layout.JobKey("default", job_id), index, seq, "earlier"), data, "application/jsonl"
    )
    return lines


def test_a_resumed_shard_runs_only_what_its_checkpoint_lacks(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(6)])
    saved = _checkpoint(services, job_id, 1, 0, ["req-4"])
    saved |= _checkpoint(services, job_id, 1, 1, ["req-6"])
    made, engine_for = recorder()

    summary = run_shard(services, job_id, 1, engine_for=engine_for)

    assert made[0].asked == ["req-5"]
    out = services.storage.get_bytes(summary.output_key).splitlines()
    assert custom_ids([orjson.loads(r) for r in out]) == ["req-4", "req-5", "req-6"]
    assert out[0] == saved["req-4"] and out[2] == saved["req-6"]  # kept byte for byte
    assert b"from-checkpoint" not in out[1]
    assert (summary.succeeded, summary.failed) == (3, 0)
    assert summary.completion_tokens == 5 + 3 + 5
    assert summary.prompt_tokens == 10 + outputs.usage_of(orjson.loads(out[1]))[0] + 10  # checkpointed ones count
    assert list(services.storage.list(layout.shard_parts_prefix(layout.JobKey("default", job_id), 1))) == []
    assert services.jobs.counts(job_id).completed == 3


def test_a_fully_checkpointed_shard_needs_no_engine_work(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    _checkpoint(services, job_id, 0, 0, ids(3))
    made, engine_for = recorder()
    summary = run_shard(services, job_id, 0, engine_for=engine_for)
    assert made[0].asked == []
    assert summary.succeeded == 3


def test_give_up_turns_the_rest_into_shard_failed_lines_and_keeps_checkpoints(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    saved = _checkpoint(services, job_id, 0, 0, ["req-2"])

    summary = give_up_shard(services, job_id, 0, "shard failed 3 times: RuntimeError")

    out = read_jsonl(services, summary.output_key)
    assert custom_ids(out) == ids(3)
    assert orjson.dumps(out[1]) == saved["req-2"]
    for line in (out[0], out[2]):
        assert line["response"] is None
        assert line["error"] == {"code": "shard_failed", "message": "shard failed 3 times: RuntimeError"}
    assert (summary.succeeded, summary.failed) == (1, 2)
    assert services.jobs.counts(job_id) == Counts(1, 2, 10, 5)


def test_give_up_after_a_finished_run_keeps_the_finished_results(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    done = run_shard(services, job_id, 0)
    assert give_up_shard(services, job_id, 0, "late") == done


# --- finalize --------------------------------------------------------------------


def run_all_shards(svc: Services, job_id: str, manifest: Manifest) -> list[ShardSummary]:
    return [run_shard(svc, job_id, s.index) for s in manifest.shards]


def test_finalize_merges_every_request_once_in_input_order(services: Services) -> None:
    job_id, manifest = prepared(services, [request_line(c) for c in ids(8)])
    summaries = run_all_shards(services, job_id, manifest)

    job = finalize_job(services, job_id)

    assert job.status is JobStatus.COMPLETED
    assert job.results_key == layout.results_key(layout.JobKey("default", job_id))
    assert job.errors_key == layout.errors_key(layout.JobKey("default", job_id))
    results = read_jsonl(services, job.results_key)
    assert custom_ids(results) == ids(8)
    assert read_jsonl(services, job.errors_key) == []
    assert job.stats == {
        "total": 8,
        "successful": 8,
        "failed": 0,
        "avg_response_time": 0.0,
        "prompt_tokens": sum(s.prompt_tokens for s in summaries),
        "completion_tokens": 8 * 3,
        "cached_tokens": 0,
        "reused": 0,
        "engine_requests": 8,
        "engine_seconds": round(sum(s.engine_seconds for s in summaries), 3),
        "cost": None,  # the instant engine's model has no gpu_hour_price
        "quality": {
            "schema_checked": 0,
            "schema_valid": 0,
            "schema_invalid": 0,
            "answer_field": "recommendation",
            "answers": {},
        },
    }
    assert job.finished_at is not None and job.finalizing_at is not None
    assert job.estimated_completion is None
    assert services.jobs.model_rate(MODEL) is not None


def test_finalize_keeps_input_order_when_engines_answer_out_of_order(services: Services) -> None:
    job_id, manifest = prepared(services, [request_line(c) for c in ids(7)])
    _, engine_for = recorder(reverse=True)
    for shard in reversed(manifest.shards):
        run_shard(services, job_id, shard.index, engine_for=engine_for)
    job = finalize_job(services, job_id)
    assert job.results_key is not None
    assert custom_ids(read_jsonl(services, job.results_key)) == ids(7)


def test_finalize_splits_failures_into_the_errors_file(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(7)])
    _, rejecting = recorder(reject=frozenset({"req-2"}))
    run_shard(services, job_id, 0, engine_for=rejecting)
    _checkpoint(services, job_id, 1, 0, ["req-5"])
    give_up_shard(services, job_id, 1, "gave up")
    run_shard(services, job_id, 2)

    job = finalize_job(services, job_id)

    assert job.results_key is not None and job.errors_key is not None
    results, errors = read_jsonl(services, job.results_key), read_jsonl(services, job.errors_key)
    assert custom_ids(results) == ["req-1", "req-3", "req-5", "req-7"]
    assert custom_ids(errors) == ["req-2", "req-4", "req-6"]
    assert sorted(custom_ids(results) + custom_ids(errors)) == sorted(ids(7))
    assert job.stats is not None
    assert (job.stats["total"], job.stats["successful"], job.stats["failed"]) == (7, 4, 3)
    assert job.stats["completion_tokens"] == sum(outputs.usage_of(r)[1] for r in results)
    assert job.stats["prompt_tokens"] == sum(outputs.usage_of(r)[0] for r in results)


def test_finalize_twice_returns_the_completed_job_unchanged(services: Services) -> None:
    job_id, manifest = prepared(services, [request_line(c) for c in ids(4)])
    run_all_shards(services, job_id, manifest)
    first = finalize_job(services, job_id)
    results = services.storage.get_bytes(layout.results_key(layout.JobKey("default", job_id)))
    second = finalize_job(services, job_id)
    assert second == first
    assert services.storage.get_bytes(layout.results_key(layout.JobKey("default", job_id))) == results


def test_finalize_with_a_missing_shard_does_not_complete_the_job(services: Services) -> None:
    job_id, _ = prepared(services, [request_line(c) for c in ids(4)])
    run_shard(services, job_id, 0)
    with pytest.raises(ObjectNotFound):
        finalize_job(services, job_id)
    assert services.jobs.get(job_id).status is JobStatus.FINALIZING
    assert not services.storage.exists(layout.results_key(layout.JobKey("default", job_id)))


def test_a_duplicate_run_that_finishes_second_yields_to_the_first(services: Services) -> None:
    """Two runs of one shard at once (a duplicate delivery): the summary is a
    conditional create, so the first to finish is the shard's, and the second
    drops its own output instead of leaving a second copy."""
    from batchsvc.pipeline.shards import ShardRun

    job_id, _ = prepared(services, [request_line(c) for c in ids(3)])
    spec = services.models.get(MODEL)
    assert spec is not None
    first = ShardRun(services, services.jobs.get(job_id), 0, spec).execute(InstantEngine(spec))
    second = ShardRun(services, services.jobs.get(job_id), 0, spec).execute(InstantEngine(spec))

    assert second == first
    shards = layout.job_prefix(layout.JobKey("default", job_id)) + "shards/"
    outputs_written = [o.key for o in services.storage.list(shards) if o.key.endswith("output.jsonl")]
    assert outputs_written == [first.output_key]
