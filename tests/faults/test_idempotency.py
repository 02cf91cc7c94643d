"""Idempotent submission (web/idempotency.py): a retried POST with the same
Idempotency-Key makes one job, in sequence, in parallel, and when the first
answer was lost on the way back; and what the official client's own retries do.

No job runs here (no workers): what is judged is how many jobs and files the
submissions made, counted in the job and file stores."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
import requests

from tests.support.client import client_of, upload
from tests.support.invariants import INSTANT_MODEL, instant_requests
from tests.support.stack import Stack
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

JSONL = b"".join(orjson.dumps(r) + b"\n" for r in instant_requests(3))


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(start=False)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[TcpProxy]:
    """The API over real HTTP, reached through a proxy that can lose an answer."""
    port = int(stack.serve_http().rsplit(":", 1)[1])
    with TcpProxy(("127.0.0.1", port)).start() as p:
        yield p


def jobs_of(stack: Stack, tenant: str = "default") -> list[str]:
    return stack.services.jobs.list_ids(limit=100, tenant=tenant)


def files_of(stack: Stack, tenant: str = "default") -> list[str]:
    return stack.services.files.list_ids(limit=100, tenant=tenant)


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}


def test_the_same_post_twice_in_sequence_makes_one_job(stack: Stack) -> None:
    headers = key()
    first = upload(stack.client, JSONL, INSTANT_MODEL, headers=headers)
    again = upload(stack.client, JSONL, INSTANT_MODEL, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert jobs_of(stack) == [first.get_json()["job_id"]]

    # Without a key, or with another, a POST is a new job.
    assert upload(stack.client, JSONL, INSTANT_MODEL).status_code == 202
    assert upload(stack.client, JSONL, INSTANT_MODEL, headers=key()).status_code == 202
    assert len(jobs_of(stack)) == 3


def test_the_same_key_with_another_body_is_a_422_naming_the_header(stack: Stack) -> None:
    headers = key()
    assert upload(stack.client, JSONL, INSTANT_MODEL, headers=headers).status_code == 202
    other = upload(stack.client, JSONL + JSONL, INSTANT_MODEL, headers=headers)
    assert other.status_code == 422
    error = other.get_json()["error"]
    assert error["type"] == "validation_error"
    assert error["details"] == {"header": "Idempotency-Key"}
    assert "different request" in error["message"]
    assert len(jobs_of(stack)) == 1


def test_a_key_belongs_to_its_tenant(stack: Stack) -> None:
    headers = key()
    mine = upload(stack.client, JSONL, INSTANT_MODEL, headers=headers).get_json()["job_id"]
    theirs = upload(client_of(stack.app, "acme"), JSONL, INSTANT_MODEL, headers=headers).get_json()["job_id"]
    assert mine != theirs
    assert jobs_of(stack, "acme") == [theirs]


def test_a_failed_first_request_leaves_the_key_free(stack: Stack) -> None:
    headers = key()
    refused = upload(stack.client, JSONL, "no-such-model", headers=headers)
    assert refused.status_code == 422  # refused at the door; nothing was made
    fixed = upload(stack.client, JSONL, "no-such-model", headers=headers)
    assert fixed.status_code == 422  # the same request is judged again, not replayed
    assert "Idempotent-Replayed" not in fixed.headers
    assert jobs_of(stack) == []


def test_a_malformed_key_is_a_400_naming_the_header(stack: Stack) -> None:
    response = upload(stack.client, JSONL, INSTANT_MODEL, headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"] == {"header": "Idempotency-Key"}


def test_openai_routes_replay_files_and_batches(stack: Stack) -> None:
    headers = key()
    form: dict[str, Any] = {"purpose": "batch"}
    files = [
        stack.client.post("/v1/files", data={**form, "file": (io.BytesIO(JSONL), "in.jsonl")}, headers=headers)
        for _ in range(2)
    ]
    assert files[0].status_code == files[1].status_code == 200
    assert files[0].get_json()["id"] == files[1].get_json()["id"]
    assert len(files_of(stack)) == 1
    body = {"input_file_id": files[0].get_json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch_key = key()
    batches = [stack.client.post("/v1/batches", json=body, headers=batch_key) for _ in range(2)]
    assert batches[0].status_code == 200, batches[0].get_json()
    assert batches[0].get_json()["id"] == batches[1].get_json()["id"]
    # The same key for both routes names two requests, not one reused key.
    assert stack.client.post("/v1/batches", json=body, headers=headers).status_code == 200
    assert len(jobs_of(stack)) == 2


def test_concurrent_duplicates_make_one_job(stack: Stack, proxy: TcpProxy) -> None:
    headers = {**key(), "Authorization": f"Bearer {stack.api_key}"}
    answers: list[requests.Response] = []
    start = threading.Barrier(6)

    def post() -> None:
        start.wait()
        files = {"file": ("in.jsonl", JSONL)}
        answers.append(requests.post(f"{proxy.url}/v1/batch", data={"model": INSTANT_MODEL}, files=files,
                                     headers=headers, timeout=60))  # fmt: skip

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 5
    assert len(jobs_of(stack)) == 1


def test_a_lost_answer_retried_makes_one_job(stack: Stack, proxy: TcpProxy) -> None:
    headers = {**key(), "Authorization": f"Bearer {stack.api_key}"}
    files = {"file": ("in.jsonl", JSONL)}
    proxy.drop_next_answers(1)  # the server commits the job; the client never hears
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{proxy.url}/v1/batch", data={"model": INSTANT_MODEL}, files=files, headers=headers, timeout=30)
    assert len(jobs_of(stack)) == 1  # committed
    retried = requests.post(f"{proxy.url}/v1/batch", data={"model": INSTANT_MODEL}, files=files, headers=headers,
                            timeout=30)  # fmt: skip
    assert retried.status_code == 202
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert jobs_of(stack) == [retried.json()["job_id"]]


def test_the_openai_clients_own_retries(stack: Stack, proxy: TcpProxy) -> None:
    """The client (max_retries=2 by default) retries a POST whose answer it lost,
    by itself. Without a key that is a second object; with one passed in
    extra_headers, the retry gets the first answer."""
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=stack.api_key) as client:
        proxy.drop_next_answers(1)
        client.files.create(file=("in.jsonl", JSONL), purpose="batch")
        assert len(files_of(stack)) == 2  # the client's own retry uploaded the file again

        proxy.drop_next_answers(1)
        kept = client.files.create(file=("in.jsonl", JSONL), purpose="batch", extra_headers=key())
        assert len(files_of(stack)) == 3  # one more, not two
        assert kept.id in files_of(stack)

        proxy.drop_next_answers(1)
        batch = client.batches.create(
            input_file_id=kept.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key()
        )
        assert jobs_of(stack) == [batch.id]
