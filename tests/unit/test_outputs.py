"""The OpenAI batch output line shape (batchsvc.inference.outputs), checked against the official openai types."""

from __future__ import annotations

import re
from typing import Any

import orjson
from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from batchsvc.inference.outputs import (
    CHAT_URL,
    COMPLETIONS_URL,
    Choice,
    RequestFailure,
    completion_body,
    is_success,
    line_ids,
    not_run_line,
    rejected_line,
    success_line,
    usage_of,
)

JOB = "batch_" + "ab" * 16
LINE_KEYS = {"id", "custom_id", "response", "error"}


def chat_success(custom_id: str = "cand-1", **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "url": CHAT_URL,
        "job_id": JOB,
        "custom_id": custom_id,
        "model": "qwen3-4b",
        "choices": [Choice(0, '{"score": 7}', "stop", 5)],
        "prompt_tokens": 11,
        "created": 1_700_000_000,
    }
    values.update(overrides)
    return success_line(JOB, custom_id, completion_body(**values))


# --- success ---------------------------------------------------------------------


def test_success_line_has_the_openai_batch_output_shape() -> None:
    line = chat_success()
    assert set(line) == LINE_KEYS
    assert line["custom_id"] == "cand-1"
    assert line["error"] is None
    assert set(line["response"]) == {"status_code", "request_id", "body"}
    assert line["response"]["status_code"] == 200
    assert line["id"].startswith("batch_req_")
    assert line["response"]["request_id"].startswith("req_")


def test_chat_success_body_is_a_chat_completion() -> None:
    body = chat_success()["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen3-4b"
    assert body["created"] == 1_700_000_000
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == '{"score": 7}'
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_usage_sums_the_completion_tokens_of_every_choice() -> None:
    choices = [Choice(0, "a", "stop", 4), Choice(1, "bb", "length", 9)]
    body = chat_success(choices=choices)["response"]["body"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert [c["message"]["content"] for c in body["choices"]] == ["a", "bb"]
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 13,
        "total_tokens": 24,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_completions_url_gets_a_text_completion_body() -> None:
    body = completion_body(
        url=COMPLETIONS_URL,
        job_id=JOB,
        custom_id="c",
        model="m",
        choices=[Choice(0, " world", "length", 2)],
        prompt_tokens=3,
        created=1,
    )
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "length"}]
    assert "message" not in body["choices"][0]
    assert body["usage"]["total_tokens"] == 5


def test_success_line_survives_a_json_round_trip() -> None:
    line = chat_success()
    assert orjson.loads(orjson.dumps(line)) == line


def test_openai_client_parses_a_chat_success_body() -> None:
    body = chat_success(choices=[Choice(0, "yes", "stop", 1), Choice(1, "no", "length", 2)])["response"]["body"]
    parsed = ChatCompletion.model_validate(body)
    assert parsed.object == "chat.completion"
    assert [c.message.content for c in parsed.choices] == ["yes", "no"]
    assert parsed.choices[1].finish_reason == "length"
    assert parsed.usage is not None and parsed.usage.total_tokens == 14


def test_openai_client_parses_a_text_completion_body() -> None:
    body = completion_body(
        url=COMPLETIONS_URL,
        job_id=JOB,
        custom_id="c",
        model="m",
        choices=[Choice(0, "text", "stop", 1)],
        prompt_tokens=2,
    )
    parsed = Completion.model_validate(body)
    assert parsed.object == "text_completion"
    assert parsed.choices[0].text == "text"
    assert parsed.usage is not None and parsed.usage.completion_tokens == 1


# --- errors ----------------------------------------------------------------------


def test_rejected_line_carries_the_error_in_a_400_body() -> None:
    failure = RequestFailure("context_length_exceeded", "prompt is longer than the maximum model length", param="x")
    line = rejected_line(JOB, "cand-2", failure)
    assert set(line) == LINE_KEYS
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert error["message"] == "prompt is longer than the maximum model length"
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "x"
    assert ErrorObject.model_validate(error).code == "context_length_exceeded"


def test_rejected_line_keeps_a_non_400_status() -> None:
    line = rejected_line(JOB, "c", RequestFailure("engine_error", "no output", 500))
    assert line["response"]["status_code"] == 500
    assert not is_success(line)


def test_not_run_line_has_no_response_and_an_error() -> None:
    line = not_run_line(JOB, "cand-3", "shard_failed", "shard failed 3 times: RuntimeError")
    assert set(line) == LINE_KEYS
    assert line["response"] is None
    assert line["error"] == {"code": "shard_failed", "message": "shard failed 3 times: RuntimeError"}
    assert line["custom_id"] == "cand-3"


# --- ids -------------------------------------------------------------------------


def test_ids_are_deterministic_for_a_job_and_custom_id() -> None:
    assert line_ids(JOB, "a") == line_ids(JOB, "a")
    assert chat_success("a")["id"] == chat_success("a")["id"]
    assert chat_success("a")["response"]["body"]["id"] == chat_success("a")["response"]["body"]["id"]


def test_ids_differ_across_custom_ids_and_jobs() -> None:
    ids = {line_ids(JOB, f"req-{i}")[0] for i in range(1000)}
    assert len(ids) == 1000
    assert line_ids(JOB, "a") != line_ids("batch_" + "cd" * 16, "a")


def test_all_line_kinds_of_one_request_share_its_id() -> None:
    # A re-run that turns into an error line replaces, never duplicates, the request.
    ok = chat_success("same")
    rejected = rejected_line(JOB, "same", RequestFailure("invalid_request", "bad"))
    lost = not_run_line(JOB, "same", "shard_failed", "gone")
    assert ok["id"] == rejected["id"] == lost["id"]
    assert ok["response"]["request_id"] == rejected["response"]["request_id"]


def test_id_shapes() -> None:
    line_id, request_id = line_ids(JOB, "x")
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", line_id)
    assert request_id == "req_" + line_id.removeprefix("batch_req_")
    assert chat_success("x")["response"]["body"]["id"] == "chatcmpl-" + line_id.removeprefix("batch_req_")


# --- is_success / usage_of -------------------------------------------------------


def test_is_success_only_for_200_responses_without_error() -> None:
    assert is_success(chat_success())
    assert not is_success(rejected_line(JOB, "c", RequestFailure("invalid_request", "bad")))
    assert not is_success(not_run_line(JOB, "c", "shard_failed", "gone"))
    with_error = {**chat_success(), "error": {"code": "x", "message": "y"}}
    assert not is_success(with_error)


def test_usage_of_a_success_line() -> None:
    assert usage_of(chat_success(prompt_tokens=20, choices=[Choice(0, "x", "stop", 6)])) == (20, 6)


def test_usage_of_error_lines_is_zero() -> None:
    assert usage_of(rejected_line(JOB, "c", RequestFailure("invalid_request", "bad"))) == (0, 0)
    assert usage_of(not_run_line(JOB, "c", "shard_failed", "gone")) == (0, 0)
