"""The official `openai` client, unchanged, against the real stack over HTTP:
workers on real Redis, the vLLM engine on the tiny model, storage on S3 (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from batchsvc.storage import layout
from tests.support.examples import write_candidates
from tests.support.invariants import assert_each_request_once, lines_of
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration

TERMINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def client(s3_stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{s3_stack.serve_http()}/v1", api_key=s3_stack.api_key) as c:
        yield c


def upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as fh:
        return client.files.create(file=fh, purpose="batch").id


def start(client: openai.OpenAI, path: Path) -> Batch:
    return client.batches.create(
        input_file_id=upload(client, path),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"model": "tiny-random"},
    )


def wait_for(stack: Stack, client: openai.OpenAI, batch_id: str, timeout: float) -> Batch:
    def finished() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in TERMINAL else None

    try:
        return wait_until(finished, timeout, interval=0.5, what=f"batch {batch_id} to finish")
    except TimeoutError:
        raise TimeoutError(
            f"{client.batches.retrieve(batch_id)}\n--- cpu worker ---\n{stack.cpu.log_tail()}"
            f"\n--- llm worker ---\n{stack.llm.log_tail()}"
        ) from None


def test_upload_create_poll_and_download(s3_stack: Stack, client: openai.OpenAI, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "candidates.jsonl", 200)
    batch = start(client, tmp_path / "candidates.jsonl")
    assert (batch.object, batch.status, batch.model) == ("batch", "validating", "tiny-random")

    done = wait_for(s3_stack, client, batch.id, timeout=180)

    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (200, 200, 0)
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
    assert done.failed_at is done.cancelled_at is done.expired_at is None
    assert done.output_file_id and done.error_file_id

    # usage and model, read by the official client's own types.
    assert done.model == "tiny-random"
    assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert 0 <= done.usage.input_tokens_details.cached_tokens <= done.usage.input_tokens

    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    text = client.files.content(done.output_file_id).text
    assert len(text.encode()) == output.bytes
    results = lines_of(text)
    assert [r["custom_id"] for r in results] == [q["custom_id"] for q in requests]
    for line in results:
        assert line["error"] is None and line["response"]["status_code"] == 200
        ChatCompletion.model_validate(line["response"]["body"])
    usage = [ChatCompletion.model_validate(line["response"]["body"]).usage for line in results]
    assert done.usage.input_tokens == sum(u.prompt_tokens for u in usage if u)
    assert done.usage.output_tokens == sum(u.completion_tokens for u in usage if u)
    assert client.files.content(done.error_file_id).text == ""

    with pytest.raises(openai.ConflictError, match="cannot cancel a batch that is completed") as conflict:
        client.batches.cancel(batch.id)
    assert conflict.value.response.headers["x-should-retry"] == "false"  # the client gives up at once


def test_cancel_mid_run_accounts_for_every_request(s3_stack: Stack, client: openai.OpenAI, tmp_path: Path) -> None:
    requests = write_candidates(tmp_path / "big.jsonl", 2000)
    batch = start(client, tmp_path / "big.jsonl")

    def running() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        assert current.status not in TERMINAL, current
        return current if current.request_counts and current.request_counts.completed > 0 else None

    wait_until(running, 180, interval=0.5, what="the first finished requests")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None

    final = wait_for(s3_stack, client, batch.id, timeout=180)

    assert final.status == "cancelled", final
    assert final.cancelled_at is not None and final.completed_at is None
    assert final.output_file_id and final.error_file_id
    results = lines_of(client.files.content(final.output_file_id).text)
    errors = lines_of(client.files.content(final.error_file_id).text)
    assert_each_request_once(requests, results, errors)

    not_run = [e for e in errors if (e["error"] or {}).get("code") == "batch_cancelled"]
    assert 0 < len(not_run) < 2000  # it stopped part-way
    assert all(e["response"] is None for e in not_run)
    assert results, "what finished before the cancel is kept"
    counts = final.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (2000, len(results), len(errors))
    assert client.batches.cancel(batch.id).status == "cancelled"  # harmless twice


def test_list_pages_with_a_cursor(s3_stack: Stack, client: openai.OpenAI, tmp_path: Path) -> None:
    write_candidates(tmp_path / "tiny.jsonl", 2)
    # Cancelled at once, most of them before they run: the list needs batches, not work.
    made = []
    for _ in range(3):
        batch = start(client, tmp_path / "tiny.jsonl")
        client.batches.cancel(batch.id)
        made.append(batch.id)
    for batch_id in made:
        wait_for(s3_stack, client, batch_id, timeout=120)

    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]  # newest first
    assert first.has_more is True and first.has_next_page()
    second = first.get_next_page()
    assert second.data[0].id == made[0]

    seen = [b.id for b in client.batches.list(limit=2)]  # the auto-paging iterator walks every page
    assert len(seen) == len(set(seen)) >= 3
    assert [i for i in seen if i in made] == made[::-1]

    files = [f.id for f in client.files.list(limit=2, purpose="batch")]
    assert len(files) == len(set(files)) >= 3


def test_a_bad_line_fails_the_batch_naming_it_and_runs_nothing(
    s3_stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    requests = write_candidates(tmp_path / "bad.jsonl", 5)
    lines = [orjson.dumps(r) for r in requests]
    lines[2] = orjson.dumps({**requests[2], "url": "/v1/completions"})  # not this batch's endpoint
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    batch = start(client, tmp_path / "bad.jsonl")

    final = wait_for(s3_stack, client, batch.id, timeout=60)

    assert final.status == "failed"
    assert final.failed_at is not None and final.in_progress_at is None
    assert final.errors is not None and final.errors.data
    assert final.errors.data[0].line == 3
    assert final.errors.data[0].code
    assert final.request_counts is not None
    assert (final.request_counts.completed, final.request_counts.failed) == (0, 0)
    assert final.output_file_id is None and final.error_file_id is None
    # Only the job record's copy: no shard was cut, nothing ran.
    assert [i.key for i in s3_stack.storage.list(layout.job_prefix(layout.JobKey("default", batch.id)))] == [
        layout.job_record_key(layout.JobKey("default", batch.id))
    ]


def test_bad_requests_raise_the_clients_typed_errors_with_our_messages(client: openai.OpenAI, tmp_path: Path) -> None:
    write_candidates(tmp_path / "one.jsonl", 1)
    file_id = upload(client, tmp_path / "one.jsonl")
    with pytest.raises(openai.UnprocessableEntityError, match="invalid field 'endpoint'"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match="no file with id 'file-missing'"):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.UnprocessableEntityError, match="invalid field 'purpose'"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.content(file_id)
