"""Reuse, usage and cost on the real stack: workers on real Redis, the vLLM
engine on the tiny model, storage on S3 (moto)."""

from __future__ import annotations

import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from batchsvc.pipeline.campaigns import run_id
from tests.support.beat import Beat
from tests.support.client import client_of, error_of, upload
from tests.support.examples import candidate_requests, write_candidates
from tests.support.http import LoopbackHTTPServer
from tests.support.invariants import lines_of
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration


def jsonl(requests: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in requests)


def run(stack: Stack, requests: list[dict], client: Any = None, **fields: Any) -> tuple[dict, list[dict]]:
    client = client or stack.client
    response = upload(client, jsonl(requests), "tiny-random", **fields)
    assert response.status_code == 202, response.get_json()
    job = stack.wait_for_job(response.get_json()["job_id"], client=client)
    assert job["status"] == "completed", job
    links = client.get(f"/v1/batch/{job['job_id']}/results").get_json()
    with urllib.request.urlopen(links["results_url"], timeout=30) as results:
        return job | {"stats": links["stats"]}, lines_of(results.read())


def answers(lines: list[dict]) -> list[tuple[str, Any]]:
    return [(line["custom_id"], line["response"]["body"]["choices"]) for line in lines]


def test_a_rerun_is_answered_from_the_last_run_and_only_changed_lines_reach_the_engine(s3_stack: Stack) -> None:
    requests = candidate_requests(300)
    first, first_lines = run(s3_stack, requests, metadata={"job_name": "nightly-300"})
    assert (first["stats"]["reused"], first["stats"]["engine_requests"]) == (0, 300)
    assert first["usage"]["input_tokens"] == first["stats"]["prompt_tokens"] > 0
    assert first["cost"] is not None and first["engine_seconds"] > 0
    assert first["reproducibility"]["weights"].startswith("sha256:")
    assert first["reproducibility"]["engine"]["version"].startswith("vllm")

    # The same file again: every answer comes from the first run; the engine is
    # asked for nothing (engine_requests is counted by the LLM worker's shard runs).
    second, second_lines = run(s3_stack, requests, metadata={"job_name": "nightly-300"}, reuse="latest")
    assert second["reuse_from"] == [first["job_id"]]
    assert (second["stats"]["reused"], second["stats"]["engine_requests"]) == (300, 0)
    assert second["usage"]["total_tokens"] == 0 and second["cost"] == 0
    assert answers(second_lines) == answers(first_lines)
    assert {line["reused_from"] for line in second_lines} == {first["job_id"]}
    assert [line["fingerprint"] for line in second_lines] == [line["fingerprint"] for line in first_lines]

    # 100 lines changed: those 100 run, the other 200 are reused.
    changed = [dict(r) for r in requests]
    for i in range(0, 300, 3):
        body = dict(changed[i]["body"])
        body["messages"] = [*body["messages"][:-1], {"role": "user", "content": body["messages"][-1]["content"] + "!"}]
        changed[i] = {**changed[i], "body": body}
    third, third_lines = run(s3_stack, changed, metadata={"job_name": "nightly-300"}, reuse="latest")
    assert third["reuse_from"] == [second["job_id"]]
    assert (third["stats"]["reused"], third["stats"]["engine_requests"]) == (200, 100)
    assert [line["custom_id"] for line in third_lines] == [r["custom_id"] for r in requests]
    assert [("reused_from" in line) for line in third_lines] == [i % 3 != 0 for i in range(300)]
    print(f"\nreuse counts: rerun {second['stats']['reused']} reused / {second['stats']['engine_requests']} run; "
          f"100 changed: {third['stats']['reused']} reused / {third['stats']['engine_requests']} run")  # fmt: skip


def test_reuse_never_crosses_tenants(s3_stack: Stack, tmp_path: Path) -> None:
    requests = candidate_requests(5, seed=11)
    acme = client_of(s3_stack.app, "acme")
    theirs, _ = run(s3_stack, requests, client=acme, metadata={"job_name": "shared-name"})

    refused = upload(s3_stack.client, jsonl(requests), "tiny-random", reuse_from=theirs["job_id"])
    assert error_of(refused, 422, "validation_error")["details"]["fields"]["reuse_from"] == [
        f"no job {theirs['job_id']!r}"
    ]

    # The same job_name in another tenant is not "the latest run".
    ours, _ = run(s3_stack, requests, metadata={"job_name": "shared-name"}, reuse="latest")
    assert ours["reuse_from"] == [] and ours["stats"]["reused"] == 0


def campaign_runs(stack: Stack, name: str) -> list[dict]:
    svc = stack.services
    jobs = [svc.jobs.get(i) for i in svc.jobs.list_ids(limit=100, tenant="default")]
    return sorted(
        (stack.client.get(f"/v1/batch/{j.id}").get_json() for j in jobs if j.metadata.get("job_name") == name),
        key=lambda view: view["metadata"]["scheduled_for"],
    )


def test_a_campaign_runs_once_per_tick_under_two_beats_and_its_next_run_reuses_all(
    s3_stack: Stack, http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    write_candidates(http_server.root / "campaign.jsonl", 40, seed=21)
    name = f"campaign-{uuid.uuid4().hex[:6]}"
    # A tick every 8 s instead of nightly, so that the test sees a few.
    entry = {
        "name": name,
        "every": 8,
        "tenant": "default",
        "model": "tiny-random",
        "input_file_url": f"{http_server.url}/campaign.jsonl",
    }
    Path(s3_stack.settings.schedule_file).write_text(yaml.safe_dump({"rescoring": [entry]}))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    beats = [Beat(s3_stack.cpu.env, tmp_path / "a").start(), Beat(s3_stack.cpu.env, tmp_path / "b").start()]

    def sent() -> list[int]:
        return [beat.log_path.read_text().count(f"Sending due task rescore:{name}") for beat in beats]

    try:
        wait_until(
            lambda: (
                len([r for r in campaign_runs(s3_stack, name) if r["status"] == "completed"]) >= 2 and min(sent()) >= 2
            ),
            180,
            what="two completed campaign runs, and two ticks sent by each beat",
        )
        sends = sent()
    finally:
        for beat in beats:
            beat.stop()
        Path(s3_stack.settings.schedule_file).unlink()

    runs = campaign_runs(s3_stack, name)
    # Both beats sent ticks; each tick became one run at most, whose id its time decides.
    assert len(runs) < sum(sends), (sends, runs)
    ticks = [datetime.fromisoformat(r["metadata"]["scheduled_for"]).timestamp() for r in runs]
    assert len(set(ticks)) == len(runs)
    assert [r["job_id"] for r in runs] == [run_id("default", name, t) for t in ticks]
    done = [r for r in runs if r["status"] == "completed"]
    first, second = done[0], done[1]
    assert (first["reused"], first["reuse_from"]) == (0, [])
    assert second["reuse_from"] == [first["job_id"]] and second["reused"] == 40
    assert second["usage"]["total_tokens"] == 0 and second["progress"]["completed"] == 40
    print(f"\ncampaign: beats sent {sends} ticks, {len(runs)} run(s); second run reused {second['reused']} of 40")


def test_a_dry_run_counts_the_real_runs_prompt_tokens_and_leaves_nothing(s3_stack: Stack) -> None:
    requests = candidate_requests(200, seed=31)
    svc = s3_stack.services
    keys_before = set(svc.jobs.redis.scan_iter(f"{svc.jobs.prefix}:*"))
    objects_before = {i.key for i in s3_stack.storage.list("tenants/")}

    queued = upload(s3_stack.client, jsonl(requests), "tiny-random", dry_run="true", completion_window="1s")
    assert queued.status_code == 202, queued.get_json()
    url = queued.get_json()["url"]
    dry = wait_until(lambda: (b := s3_stack.client.get(url).get_json())["status"] != "queued" and b, 120)
    assert dry["status"] == "done", dry
    assert (dry["requests"], dry["reused"], dry["to_run"]) == (200, 0, 200)
    assert len(dry["warnings"]) == 1 and "completion_window 1s cannot be met" in dry["warnings"][0]
    assert s3_stack.client.delete(url).status_code == 200

    # Nothing of it is left: no key of this stack's prefix, no object, no job.
    assert set(svc.jobs.redis.scan_iter(f"{svc.jobs.prefix}:*")) == keys_before
    assert {i.key for i in s3_stack.storage.list("tenants/")} == objects_before
    assert s3_stack.client.get(url).status_code == 404

    real, _ = run(s3_stack, requests)
    assert dry["prompt_tokens"] == real["stats"]["prompt_tokens"] == real["usage"]["input_tokens"]
    print(
        f"\ndry run: {dry['requests']} requests, {dry['prompt_tokens']} prompt tokens, "
        f"estimated {dry['estimated_seconds']:.1f} s at {dry['req_per_sec']} req/s ({dry['rate_source']}), "
        f"cost {dry['estimated_cost']}; real run: {real['stats']['prompt_tokens']} prompt tokens, "
        f"engine {real['engine_seconds']:.1f} s, wall {real['throughput']}, cost {real['cost']}"
    )
