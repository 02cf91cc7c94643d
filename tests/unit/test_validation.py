"""Unit tests for batchsvc.inference.validation: one test per kind of bad input."""

from __future__ import annotations

import io
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsvc.inference.validation import (
    BatchRequest,
    BatchValidator,
    LineError,
    ValidationReport,
    validate_body,
)

ALIAS = "llama-8b"
SERVED_NAME = "meta-llama/Llama-3.1-8B-Instruct"
MODEL_NAMES = {ALIAS, SERVED_NAME}


def chat(custom_id: str = "req-1", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "Hello"}], **body},
    }


def completion(custom_id: str = "req-1", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "Once upon a time", **body},
    }


def jsonl(*lines: dict[str, Any] | bytes) -> bytes:
    encoded = [line if isinstance(line, bytes) else orjson.dumps(line) for line in lines]
    return b"\n".join(encoded) + b"\n"


def validate(data: bytes, **limits: Any) -> ValidationReport:
    return BatchValidator(model_names=MODEL_NAMES, **limits).validate(io.BytesIO(data))


def single_error(report: ValidationReport) -> LineError:
    assert report.error_count == 1, report.errors
    assert len(report.errors) == 1
    return report.errors[0]


def error_on_line_2(bad: dict[str, Any] | bytes) -> LineError:
    """Validate a file whose first line is good and second line is `bad`."""
    report = validate(jsonl(chat("good"), bad))
    assert report.total_lines == 2
    assert report.valid == 1
    error = single_error(report)
    assert error.line == 2
    return error


# --- the happy path -------------------------------------------------------------


def test_mixed_chat_and_completions_file_is_valid_and_yields_raw_lines() -> None:
    lines = [
        orjson.dumps(chat("a", model=ALIAS, temperature=0.2, max_tokens=64)),
        orjson.dumps(completion("b", model=SERVED_NAME, stop=["\n"], logprobs=2)),
        # Key order and spacing must survive: shards get the bytes as uploaded.
        (
            b'{ "url": "/v1/chat/completions", "body": {"messages": '
            b'[{"role": "system", "content": '
            b'[{"type": "text", "text": "Be brief."}]}]}, '
            b'"method": "POST", "custom_id": "c" }'
        ),
    ]
    data = b"\n".join(lines) + b"\n"
    validator = BatchValidator(model_names=MODEL_NAMES)

    requests = list(validator.iter_valid(io.BytesIO(data)))

    assert [r.custom_id for r in requests] == ["a", "b", "c"]
    assert [r.line for r in requests] == [1, 2, 3]
    assert [r.url for r in requests] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chat/completions",
    ]
    assert [r.raw for r in requests] == lines
    assert requests[1].body == {
        "prompt": "Once upon a time",
        "model": SERVED_NAME,
        "stop": ["\n"],
        "logprobs": 2,
    }
    report = validator.report
    assert report.ok
    assert (report.total_lines, report.valid, report.error_count) == (3, 3, 0)
    assert report.errors == []
    assert report.bytes_read == len(data)


def test_every_sampling_field_at_a_valid_value_passes() -> None:
    body = {
        "model": ALIAS,
        "max_tokens": 4096,  # the default cap (ModelSpec.max_tokens_cap)
        "max_completion_tokens": 1,
        "temperature": 0.5,  # n > 1 needs sampling
        "top_p": 1,
        "seed": -5,
        "stop": ["a", "b", "c", "d"],
        "n": 16,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "logprobs": True,
        "top_logprobs": 20,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object"},
                "strict": True,
            },
        },
        "chat_template_kwargs": {"enable_thinking": False},
        "user": "someone",
        "stream": False,
    }
    messages = [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "bob"},
        {"role": "assistant", "content": "Hello"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    report = validate(jsonl(chat("a", **{**body, "messages": messages})))
    assert report.ok, report.errors


def test_file_without_trailing_newline_and_with_crlf_and_bom() -> None:
    first = orjson.dumps(chat("a"))
    second = orjson.dumps(completion("b"))
    data = b"\xef\xbb\xbf" + first + b"\r\n" + second  # no newline at EOF
    requests = list(BatchValidator(model_names=MODEL_NAMES).iter_valid(io.BytesIO(data)))
    assert [r.raw for r in requests] == [first, second]


# --- line-level errors ------------------------------------------------------------


def test_not_json() -> None:
    error = error_on_line_2(b'{"custom_id": "x", ')
    assert error.code == "invalid_json"
    assert error.param is None


def test_not_an_object() -> None:
    error = error_on_line_2(b'["custom_id", "x"]')
    assert error.code == "not_an_object"


def test_missing_custom_id() -> None:
    line = chat()
    del line["custom_id"]
    error = error_on_line_2(line)
    assert (error.code, error.param) == ("missing_custom_id", "custom_id")


@pytest.mark.parametrize("custom_id", ["", 7, None, "x" * 513])
def test_invalid_custom_id(custom_id: Any) -> None:
    error = error_on_line_2(chat(custom_id))
    assert (error.code, error.param) == ("invalid_custom_id", "custom_id")


def test_duplicate_custom_id_names_the_first_line() -> None:
    report = validate(jsonl(chat("same"), b"", chat("other"), completion("same")))
    error = single_error(report)
    assert (error.line, error.code, error.param) == (
        4,
        "duplicate_custom_id",
        "custom_id",
    )
    assert "line 1" in error.message
    assert report.valid == 2


@pytest.mark.parametrize("method", ["GET", "post", None])
def test_wrong_method(method: str | None) -> None:
    error = error_on_line_2({**chat("x"), "method": method})
    assert (error.code, error.param) == ("invalid_method", "method")


@pytest.mark.parametrize("url", ["/v1/embeddings", "/v1/chat/completions/", ["/v1/completions"], None])
def test_unsupported_url(url: Any) -> None:
    error = error_on_line_2({**chat("x"), "url": url})
    assert (error.code, error.param) == ("unsupported_url", "url")


def test_url_outside_the_configured_supported_urls() -> None:
    validator = BatchValidator(model_names=MODEL_NAMES, supported_urls={"/v1/chat/completions"})
    report = validator.validate(io.BytesIO(jsonl(chat("a"), completion("b"))))
    error = single_error(report)
    assert (error.line, error.code) == (2, "unsupported_url")


def test_extra_top_level_key() -> None:
    error = error_on_line_2({**chat("x"), "priority": "high"})
    assert (error.code, error.param) == ("unknown_field", "priority")
    assert "priority" in error.message


@pytest.mark.parametrize("body", [None, "text", ["messages"]])
def test_body_not_an_object(body: Any) -> None:
    error = error_on_line_2({**chat("x"), "body": body})
    assert (error.code, error.param) == ("invalid_body", "body")


def test_body_missing() -> None:
    line = chat("x")
    del line["body"]
    error = error_on_line_2(line)
    assert (error.code, error.param) == ("invalid_body", "body")


@pytest.mark.parametrize("messages", [None, [], "Hello", {"role": "user"}])
def test_body_missing_or_bad_messages(messages: Any) -> None:
    line = chat("x")
    if messages is None:
        del line["body"]["messages"]
    else:
        line["body"]["messages"] = messages
    error = error_on_line_2(line)
    assert (error.code, error.param) == ("invalid_body", "body.messages")


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "robot", "content": "hi"}, "body.messages[1].role"),
        ({"role": ["user"], "content": "hi"}, "body.messages[1].role"),
        ({"content": "hi"}, "body.messages[1].role"),
        ({"role": "user", "content": 5}, "body.messages[1].content"),
        ({"role": "user"}, "body.messages[1].content"),
        ({"role": "user", "content": []}, "body.messages[1].content"),
        ({"role": "assistant", "content": None}, "body.messages[1].content"),
        (
            {"role": "user", "content": [{"type": "text"}]},
            "body.messages[1].content[0].text",
        ),
        ({"role": "user", "content": ["hi"]}, "body.messages[1].content[0]"),
        ({"role": "user", "content": "hi", "name": 3}, "body.messages[1].name"),
        ({"role": "user", "content": "hi", "mood": "sad"}, "body.messages[1].mood"),
        ("hello", "body.messages[1]"),
    ],
)
def test_malformed_message(message: Any, param: str) -> None:
    error = error_on_line_2(chat("x", messages=[{"role": "system", "content": "ok"}, message]))
    assert (error.code, error.param) == ("invalid_body", param)


def test_image_content_part_is_rejected() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    error = error_on_line_2(chat("x", messages=[{"role": "user", "content": [part]}]))
    assert (error.code, error.param) == (
        "invalid_body",
        "body.messages[0].content[0].type",
    )
    assert "unsupported content part type" in error.message


def test_tool_calls_are_rejected_with_a_clear_message() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "1", "type": "function"}],
    }
    error = error_on_line_2(chat("x", messages=[{"role": "user", "content": "hi"}, message]))
    assert (error.code, error.param) == ("invalid_body", "body.messages[1].tool_calls")
    assert "tool calls are not supported" in error.message


def test_tools_field_is_rejected_with_a_reason() -> None:
    error = error_on_line_2(chat("x", tools=[{"type": "function"}]))
    assert (error.code, error.param) == ("invalid_body", "body.tools")
    assert "tool calling is not supported" in error.message


BAD_CHAT_FIELDS = [
    ("max_tokens", 0),
    ("max_tokens", 32769),
    ("max_tokens", 1.5),
    ("max_tokens", "10"),
    ("max_tokens", True),
    ("max_completion_tokens", 0),
    ("max_completion_tokens", 40000),
    ("max_completion_tokens", False),
    ("temperature", -0.1),
    ("temperature", 2.01),
    ("temperature", "0.5"),
    ("temperature", True),
    ("top_p", 0),
    ("top_p", 1.1),
    ("top_p", True),
    ("seed", 1.0),
    ("seed", "1"),
    ("seed", True),
    ("seed", 2**63),
    ("stop", 3),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", ["a", 1]),
    ("n", 0),
    ("n", 17),
    ("n", True),
    ("presence_penalty", -2.5),
    ("presence_penalty", True),
    ("frequency_penalty", 2.5),
    ("frequency_penalty", None),
    ("logprobs", 1),
    ("logprobs", "true"),
    ("top_logprobs", -1),
    ("top_logprobs", 21),
    ("top_logprobs", True),
    ("response_format", "json"),
    ("response_format", {"type": "xml"}),
    ("response_format", {"type": "json_object", "schema": {}}),
    ("response_format", {"type": "json_schema"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "a"}}),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "", "schema": {}}},
    ),
    (
        "response_format",
        {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {}, "strict": 1},
        },
    ),
    ("chat_template_kwargs", ["enable_thinking"]),
    ("user", 5),
    ("stream", True),
    ("stream", "false"),
]


@pytest.mark.parametrize(("name", "value"), BAD_CHAT_FIELDS)
def test_sampling_field_out_of_range_or_wrong_type(name: str, value: Any) -> None:
    error = error_on_line_2(chat("x", **{name: value}))
    assert (error.code, error.param) == ("invalid_body", f"body.{name}")
    assert error.message.startswith(f"body.{name}:")


def test_max_tokens_cap_is_configurable() -> None:
    data = jsonl(chat("a", max_tokens=1000))
    assert validate(data, max_tokens_cap=1000).ok
    error = single_error(validate(data, max_tokens_cap=999))
    assert (error.code, error.param) == ("invalid_body", "body.max_tokens")
    assert "999" in error.message


def test_top_logprobs_requires_logprobs() -> None:
    error = error_on_line_2(chat("x", top_logprobs=3))
    assert (error.code, error.param) == ("invalid_body", "body.top_logprobs")


def test_unknown_body_field() -> None:
    error = error_on_line_2(chat("x", temprature=0.5))
    assert (error.code, error.param) == ("invalid_body", "body.temprature")
    assert "body.temprature" in error.message


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        (
            {"prompt": ["a", "b"]},
            "body.prompt",
            "only a single string prompt is supported",
        ),
        (
            {"prompt": [1, 2, 3]},
            "body.prompt",
            "only a single string prompt is supported",
        ),
        ({"prompt": ""}, "body.prompt", "non-empty string"),
        ({}, "body.prompt", "required"),
        ({"prompt": "a", "echo": True}, "body.echo", "echo is not supported"),
        ({"prompt": "a", "logprobs": True}, "body.logprobs", "integer"),
        (
            {"prompt": "a", "max_completion_tokens": 5},
            "body.max_completion_tokens",
            "unknown field",
        ),
        ({"prompt": "a", "messages": []}, "body.messages", "unknown field"),
    ],
)
def test_bad_completions_body(body: dict[str, Any], param: str, text: str) -> None:
    error = error_on_line_2({**completion("x"), "body": body})
    assert (error.code, error.param) == ("invalid_body", param)
    assert text in error.message


def test_completions_accepts_echo_false_and_response_format() -> None:
    assert validate(jsonl(completion("a", echo=False, response_format={"type": "json_object"}))).ok


def test_model_mismatch() -> None:
    report = validate(
        jsonl(
            chat("a", model=ALIAS),
            chat("b", model=SERVED_NAME),
            chat("c", model="gpt-4o"),
        )
    )
    error = single_error(report)
    assert (error.line, error.code, error.param) == (3, "model_mismatch", "body.model")
    assert "gpt-4o" in error.message


def test_model_mismatch_is_reported_before_other_body_problems() -> None:
    error = error_on_line_2(chat("x", model="other", temperature=9))
    assert error.code == "model_mismatch"


def test_model_of_wrong_type_is_invalid_body() -> None:
    error = error_on_line_2(chat("x", model=["llama"]))
    assert (error.code, error.param) == ("invalid_body", "body.model")


def test_invalid_utf8() -> None:
    error = error_on_line_2(b'{"custom_id": "\xff\xfe", "method": "POST"}')
    assert error.code == "invalid_utf8"
    assert error.message == "line is not valid UTF-8"


def test_messages_never_echo_long_user_input() -> None:
    huge = "k" * 10_000
    error = error_on_line_2({**chat("x"), huge: 1})
    assert error.code == "unknown_field"
    assert len(error.message) < 300
    assert error.param is not None and len(error.param) < 120


# --- line numbers, limits and file-level errors ----------------------------------


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    data = b"\n  \n" + orjson.dumps(chat("a")) + b"\n\t\n\r\n" + b"not json\n\n"
    report = validate(data)
    error = single_error(report)
    assert (error.line, error.code) == (6, "invalid_json")
    assert (report.total_lines, report.valid) == (2, 1)


def test_empty_file() -> None:
    error = single_error(validate(b""))
    assert (error.line, error.code, error.param) == (None, "empty_file", None)


def test_whitespace_only_file() -> None:
    report = validate(b"  \n\n\t\r\n   ")
    error = single_error(report)
    assert (error.line, error.code) == (None, "empty_file")
    assert report.total_lines == 0


class ChunkSpy(io.BytesIO):
    """A stream that remembers the largest piece it ever handed out."""

    largest = 0

    def readline(self, size: int | None = -1) -> bytes:
        piece = super().readline(size)
        self.largest = max(self.largest, len(piece))
        return piece


def test_line_over_max_line_bytes_is_skipped_without_reading_it_whole() -> None:
    limit = 1000
    long_line = orjson.dumps(chat("long", messages=[{"role": "user", "content": "x" * 500_000}]))
    at_limit = orjson.dumps(chat("fits", messages=[{"role": "user", "content": ""}]))
    at_limit = at_limit.replace(b'"content":""', b'"content":"' + b"y" * (limit - len(at_limit)) + b'"')
    assert len(at_limit) == limit
    stream = ChunkSpy(jsonl(chat("a"), long_line, chat("b"), at_limit))
    validator = BatchValidator(model_names=MODEL_NAMES, max_line_bytes=limit)

    requests = list(validator.iter_valid(stream))

    assert [(r.line, r.custom_id) for r in requests] == [
        (1, "a"),
        (3, "b"),
        (4, "fits"),
    ]
    error = single_error(validator.report)
    assert (error.line, error.code) == (2, "line_too_long")
    assert "max_line_bytes=1000" in error.message
    assert validator.report.total_lines == 4
    assert stream.largest <= 64 * 1024


def test_too_many_lines_stops_reading() -> None:
    data = jsonl(chat("a"), b"", chat("b"), chat("c"), chat("d"), b"broken")
    report = validate(data, max_lines=2)
    error = single_error(report)
    assert (error.line, error.code) == (None, "too_many_lines")
    assert "max_lines=2" in error.message
    assert (report.total_lines, report.valid) == (2, 2)


def test_max_lines_ignores_blank_lines() -> None:
    assert validate(jsonl(chat("a"), b"", b"  ", chat("b"), b""), max_lines=2).ok


def test_file_too_large_stops_reading() -> None:
    data = jsonl(*(chat(f"id-{i}") for i in range(10)))
    limit = len(data) // 2
    report = validate(data + b"not json\n", max_file_bytes=limit)
    error = single_error(report)
    assert (error.line, error.code) == (None, "file_too_large")
    assert f"max_file_bytes={limit}" in error.message
    assert report.bytes_read < len(data)


def test_file_exactly_at_max_file_bytes_passes() -> None:
    data = jsonl(chat("a"), chat("b"))
    assert validate(data, max_file_bytes=len(data)).ok


def test_one_huge_line_is_not_drained_past_the_file_limit() -> None:
    stream = io.BytesIO(b'{"custom_id": "' + b"x" * 5_000_000 + b'"}\n')
    validator = BatchValidator(model_names=MODEL_NAMES, max_line_bytes=1000, max_file_bytes=10_000)
    report = validator.validate(stream)
    assert single_error(report).code == "file_too_large"
    assert report.bytes_read < 100_000


def test_at_most_max_errors_kept_but_all_counted() -> None:
    data = jsonl(*[b"nope"] * 7, chat("ok"))
    report = validate(data, max_errors=3)
    assert len(report.errors) == 3
    assert report.error_count == 7
    assert [e.line for e in report.errors] == [1, 2, 3]
    assert (report.total_lines, report.valid, report.ok) == (8, 1, False)


def test_file_level_error_is_kept_even_when_max_errors_is_reached() -> None:
    report = validate(jsonl(*[b"nope"] * 5), max_errors=2, max_lines=4)
    assert [e.code for e in report.errors] == [
        "invalid_json",
        "invalid_json",
        "too_many_lines",
    ]
    assert report.error_count == 5


def test_line_error_to_dict() -> None:
    error = LineError(line=3, code="invalid_body", message="body.n: bad", param="body.n")
    assert error.to_dict() == {
        "line": 3,
        "code": "invalid_body",
        "message": "body.n: bad",
        "param": "body.n",
    }


def test_iter_valid_yields_batch_requests() -> None:
    validator = BatchValidator(model_names=MODEL_NAMES)
    (request,) = validator.iter_valid(io.BytesIO(jsonl(chat("a"))))
    assert isinstance(request, BatchRequest)
    assert request.body == {"messages": [{"role": "user", "content": "Hello"}]}


# --- validate_body on its own (the engine adapter's second check) ---------------------


def test_validate_body_returns_every_problem() -> None:
    body = {
        "messages": [{"role": "bot", "content": 1}],
        "temperature": True,
        "model": "x",
        "foo": 1,
    }
    problems = validate_body("/v1/chat/completions", body, model_names=MODEL_NAMES, max_tokens_cap=100)
    assert [param for param, _ in problems] == [
        "body.model",
        "body.messages[0].role",
        "body.messages[0].content",
        "body.temperature",
        "body.foo",
    ]


def test_validate_body_accepts_a_valid_body() -> None:
    body = {"prompt": "hi", "max_tokens": 100}
    assert validate_body("/v1/completions", body, model_names=MODEL_NAMES, max_tokens_cap=100) == []


# --- streaming ---------------------------------------------------------------------


def write_big_file(path: Path, target_bytes: int) -> int:
    """Write ~target_bytes of valid ~1 KB requests; return the line count."""
    filler = "lorem ipsum " * 75
    count = 0
    written = 0
    with path.open("wb") as out:
        while written < target_bytes:
            line = orjson.dumps(chat(f"req-{count}", messages=[{"role": "user", "content": filler}]))
            written += out.write(line + b"\n")
            count += 1
    return count


def test_large_file_is_streamed_not_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line_count = write_big_file(path, 50 * 1024 * 1024)
    validator = BatchValidator(model_names=MODEL_NAMES)

    started = time.perf_counter()
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            valid = sum(1 for _ in validator.iter_valid(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started

    report = validator.report
    assert report.ok, report.errors[:3]
    assert valid == report.valid == report.total_lines == line_count
    assert report.bytes_read == path.stat().st_size
    assert peak < 20 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    print(
        f"validated {line_count} lines ({report.bytes_read / 2**20:.0f} MiB) "
        f"in {elapsed:.1f}s, peak {peak / 2**20:.1f} MiB"
    )


def test_a_validators_default_limits_are_the_services_and_the_models_own() -> None:
    from batchsvc.inference import validation
    from batchsvc.inference.models import ModelSpec
    from batchsvc.settings import Settings

    settings, spec = Settings(), ModelSpec(alias="a", model="m")
    assert settings.max_file_bytes == validation.DEFAULT_MAX_FILE_BYTES
    assert settings.max_lines == validation.DEFAULT_MAX_LINES
    assert settings.max_line_bytes == validation.DEFAULT_MAX_LINE_BYTES
    assert settings.max_errors_reported == validation.DEFAULT_MAX_ERRORS
    assert validation.DEFAULT_MAX_TOKENS_CAP == spec.max_tokens_cap == 4096  # it said 32768 before
