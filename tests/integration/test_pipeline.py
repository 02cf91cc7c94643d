"""One job's whole path on real components: HTTP submit -> prepare -> chord of
shards on the warm vLLM engine -> finalize -> storage -> webhook."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import orjson
import pytest

from batchsvc.outbound.webhooks import WebhookVerificationError, verify
from batchsvc.storage import layout
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.support.client import grant, keyed_client, upload
from tests.support.examples import score_schema, write_candidates
from tests.support.http import LoopbackHTTPServer
from tests.support.invariants import lines_of
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def assert_scored(results: list[dict], requests: list[dict]) -> None:
    """Every custom_id once, in input order, each a chat.completion whose content
    parses against the request's JSON schema."""
    assert [r["custom_id"] for r in results] == [q["custom_id"] for q in requests]
    schema = score_schema()
    for line in results:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] > 0
        jsonschema.validate(orjson.loads(body["choices"][0]["message"]["content"]), schema)


def test_thousand_line_job_from_url_to_s3_with_webhook(
    s3_stack: Stack, http_server: LoopbackHTTPServer, tmp_path: Path
) -> None:
    requests = write_candidates(http_server.root / "thousand.jsonl", 1000)
    response = s3_stack.client.post(
        "/v1/batch",
        json={
            "model": "tiny-random",
            "input_file_url": f"{http_server.url}/thousand.jsonl",
            "webhook_url": f"{http_server.url}/hooks/batch",
            "metadata": {"job_name": "thousand", "priority": 7},
        },
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]

    job = s3_stack.wait_for_job(job_id)
    assert job["status"] == "completed", job
    assert job["progress"] == {"completed": 1000, "failed": 0, "total": 1000, "percent": 100.0}
    assert job["metadata"] == {"job_name": "thousand", "priority": 7}

    results = s3_stack.client.get(f"/v1/batch/{job_id}/results").get_json()
    assert results["stats"]["total"] == 1000
    assert results["stats"]["successful"] == 1000
    assert results["stats"]["prompt_tokens"] > 0
    assert_scored(lines_of(fetch(results["results_url"])), requests)
    assert fetch(results["errors_url"]) == b""
    # 1000 lines at shard_size 256: four shards ran.
    shard_outputs = [
        i.key
        for i in s3_stack.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))
        if i.key.endswith("output.jsonl")
    ]
    assert len(shard_outputs) == 4

    hooks = wait_until(lambda: [p for p in http_server.posts() if p.path == "/hooks/batch"], 60, what="webhook")
    assert len(hooks) == 1
    payload = hooks[0].json()
    assert payload["job_id"] == job_id
    assert payload["status"] == "completed"
    assert payload["stats"]["successful"] == 1000
    assert_scored(lines_of(fetch(payload["results_url"])), requests)
    assert hooks[0].headers["webhook-id"].startswith("msg_")
    verify([TEST_WEBHOOK_SECRET], hooks[0].headers, hooks[0].body)  # signed, to the Standard Webhooks spec


def test_bad_line_fails_the_job_with_its_line_number_and_runs_nothing(s3_stack: Stack, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "bad.jsonl", 5)
    lines = [orjson.dumps(r) for r in requests]
    lines[2] = b'{"custom_id": "cand-00003", "method": "GET", "url": "/v1/chat/completions", "body": {}}'
    response = upload(s3_stack.client, b"\n".join(lines) + b"\n", "tiny-random")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]

    job = s3_stack.wait_for_job(job_id, timeout=60)
    assert job["status"] == "failed"
    assert [(e["line"], e["code"]) for e in job["errors"]] == [(3, "invalid_method")]
    assert job["progress"]["completed"] == job["progress"]["failed"] == 0
    keys = [i.key for i in s3_stack.storage.list(layout.job_prefix(layout.JobKey("default", job_id)))]
    assert keys == [
        layout.input_key(layout.JobKey("default", job_id)),
        layout.job_record_key(layout.JobKey("default", job_id)),
    ]  # no shard, no output: nothing ran
    conflict = s3_stack.client.get(f"/v1/batch/{job_id}/results")
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["type"] == "conflict"


def test_a_request_the_engine_rejects_fails_alone(s3_stack: Stack, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "long.jsonl", 6)
    # ~3 tokens a word: far past the tiny model's max_model_len of 2048.
    requests[4]["body"]["messages"][1]["content"] = "experience " * 4000
    data = b"".join(orjson.dumps(r) + b"\n" for r in requests)
    response = upload(s3_stack.client, data, "tiny-random")
    job_id = response.get_json()["job_id"]
    job = s3_stack.wait_for_job(job_id, timeout=120)
    assert job["status"] == "completed"
    assert job["progress"]["completed"] == 5 and job["progress"]["failed"] == 1

    results = s3_stack.client.get(f"/v1/batch/{job_id}/results").get_json()
    errors = lines_of(fetch(results["errors_url"]))
    assert [e["custom_id"] for e in errors] == [requests[4]["custom_id"]]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert_scored(lines_of(fetch(results["results_url"])), requests[:4] + requests[5:])


def test_uploaded_job_on_local_storage_is_served_by_signed_links(local_stack: Stack, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "local.jsonl", 300)
    data = (tmp_path / "local.jsonl").read_bytes()
    response = upload(local_stack.client, data, "tiny-random", metadata={"job_name": "local"})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    job = local_stack.wait_for_job(job_id)
    assert job["status"] == "completed", job

    results = local_stack.client.get(f"/v1/batch/{job_id}/results").get_json()
    link = urlsplit(results["results_url"])
    assert link.path.startswith("/v1/downloads/")
    download = local_stack.client.get(link.path)
    assert download.status_code == 200
    assert_scored(lines_of(download.data), requests)
    tampered = link.path[:-3] + ("AAA" if not link.path.endswith("AAA") else "BBB")
    assert local_stack.client.get(tampered).status_code == 403


def test_logprobs_and_legacy_completions_come_back_in_openai_shapes(s3_stack: Stack) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    lines = [
        {
            "custom_id": "chat-lp",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": "Rate this candidate."}],
                "max_tokens": 6,
                "logprobs": True,
                "top_logprobs": 2,
            },
        },
        {
            "custom_id": "legacy",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "Candidate summary:", "max_tokens": 5, "logprobs": 1, "n": 2, "temperature": 0.8},
        },
    ]
    response = upload(s3_stack.client, b"".join(orjson.dumps(line) + b"\n" for line in lines), "tiny-random")
    job_id = response.get_json()["job_id"]
    assert s3_stack.wait_for_job(job_id, timeout=120)["status"] == "completed"
    results = {
        r["custom_id"]: r
        for r in lines_of(fetch(s3_stack.client.get(f"/v1/batch/{job_id}/results").get_json()["results_url"]))
    }

    chat = ChatCompletion.model_validate(results["chat-lp"]["response"]["body"])
    tokens = chat.choices[0].logprobs.content
    assert len(tokens) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)

    legacy = Completion.model_validate(results["legacy"]["response"]["body"])
    assert [c.index for c in legacy.choices] == [0, 1]
    for choice in legacy.choices:
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == len(choice.logprobs.top_logprobs)
        assert all(len(top) <= 1 for top in choice.logprobs.top_logprobs)


def test_a_tenants_job_is_signed_with_its_own_secret_and_no_log_holds_its_data(
    s3_stack: Stack, http_server: LoopbackHTTPServer
) -> None:
    """Another tenant, end to end on the real workers: its key, its storage
    prefix, its webhook secret; and no worker or API log line carries the
    prompt, the key or a secret."""
    svc = s3_stack.services
    secret, _ = svc.tenants.rotate_webhook_secret("acme", overlap_s=60)
    acme_key = grant(s3_stack.app, "acme")
    sentinel = "Applicant Zoe Quartermaine-Vex, passport K1234567"
    lines = [
        {
            "custom_id": f"z{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"{sentinel} #{i}"}], "max_tokens": 4},
        }
        for i in range(20)
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    acme = keyed_client(s3_stack.app, acme_key)
    response = upload(acme, data, "tiny-random", webhook_url=f"{http_server.url}/hooks/acme")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    job = s3_stack.wait_for_job(job_id, client=acme)
    assert job["status"] == "completed", job
    assert s3_stack.client.get(f"/v1/batch/{job_id}").status_code == 404  # the default tenant's key

    keys = [i.key for i in s3_stack.storage.list(f"tenants/acme/jobs/{job_id}/")]
    assert f"tenants/acme/jobs/{job_id}/results.jsonl" in keys

    hooks = wait_until(lambda: [p for p in http_server.posts() if p.path == "/hooks/acme"], 60, what="webhook")
    verify([secret], hooks[0].headers, hooks[0].body)
    with pytest.raises(WebhookVerificationError):
        verify([TEST_WEBHOOK_SECRET], hooks[0].headers, hooks[0].body)  # not the deployment default

    logs = s3_stack.cpu.log_text() + s3_stack.llm.log_text()
    assert job_id in logs  # the logs are the ones that ran this job...
    for leaked in (sentinel, acme_key, s3_stack.api_key, secret, TEST_WEBHOOK_SECRET):
        assert leaked not in logs  # ...and carry none of these
