"""Streaming validation of OpenAI Batch API input files (JSONL).

Input files can be hundreds of megabytes, so :class:`BatchValidator` reads one
line at a time, never more than ``max_line_bytes + 1`` bytes of it, and yields
each valid request as soon as it is checked: the caller writes shards in the
same pass.  Because lines are yielded before the end of the file is reached,
the caller must look at ``validator.report.ok`` after exhausting the iterator
and discard what it wrote when the file as a whole failed (for example when it
turned out to be too large).

Every line gets at most one error (the first problem found), so for request
lines ``valid + failed lines == total_lines``.  :func:`validate_body` returns
every problem it finds and is reused by the engine adapter as a second check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO, NamedTuple

import orjson

from batchsvc.inference.models import ModelSpec
from batchsvc.inference.outputs import CHAT_URL, COMPLETIONS_URL
from batchsvc.inference.schema_limits import schema_problem
from batchsvc.settings import Settings, default_of

DEFAULT_SUPPORTED_URLS = frozenset({CHAT_URL, COMPLETIONS_URL})

# The limits a validator applies when not told otherwise are the service's own
# defaults (Settings) and a model's (ModelSpec), not numbers of its own.
DEFAULT_MAX_FILE_BYTES: int = default_of(Settings, "max_file_bytes")
DEFAULT_MAX_LINES: int = default_of(Settings, "max_lines")
DEFAULT_MAX_LINE_BYTES: int = default_of(Settings, "max_line_bytes")
DEFAULT_MAX_TOKENS_CAP: int = default_of(ModelSpec, "max_tokens_cap")
DEFAULT_MAX_ERRORS: int = default_of(Settings, "max_errors_reported")

MAX_CUSTOM_ID_CHARS = 512
# Error messages quote user input; cap the quote so a hostile file cannot
# blow up the error report (and so reports stay readable).
MAX_ECHO_CHARS = 100
# Long lines are skipped in chunks of this size so they never sit in memory.
_DRAIN_CHUNK_BYTES = 64 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"
_LINE_SLACK = len(_UTF8_BOM) + len(b"\r\n")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_CUSTOM_ID = "missing_custom_id"
    INVALID_CUSTOM_ID = "invalid_custom_id"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    INVALID_METHOD = "invalid_method"
    UNSUPPORTED_URL = "unsupported_url"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_BODY = "invalid_body"
    MODEL_MISMATCH = "model_mismatch"
    LINE_TOO_LONG = "line_too_long"
    TOO_MANY_LINES = "too_many_lines"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"


@dataclass(frozen=True, slots=True)
class LineError:
    line: int | None  # 1-based physical line; None for file-level errors
    code: str
    message: str
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "code": str(self.code),
            "message": self.message,
            "param": self.param,
        }


@dataclass(frozen=True, slots=True)
class BatchRequest:
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]
    raw: bytes  # the line as uploaded, without its newline: shards get it unchanged


@dataclass
class ValidationReport:
    total_lines: int = 0  # non-blank request lines seen
    valid: int = 0
    # At most ``max_errors`` line errors, plus the file-level error if there is
    # one: that one explains why validation stopped, so it is never dropped.
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def _clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- body checks --------------------------------------------------------------

# A check gets a field's value and returns a message, or None when it is fine.
Check = Callable[[Any], str | None]


class _Problem(NamedTuple):
    param: str
    message: str
    code: ErrorCode = ErrorCode.INVALID_BODY


def _is_int(value: Any) -> bool:
    # bool is a subclass of int; `"n": true` must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _is_one_of(value: Any, options: Iterable[str]) -> bool:
    # Test the type first: unhashable JSON values (lists, objects) would make
    # a set lookup raise.
    return isinstance(value, str) and value in options


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if _is_int(value) and low <= value <= high:
            return None
        return f"must be an integer between {low} and {high}"

    return check


def _number(low: float, high: float, *, exclusive_low: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if _is_number(value) and (low < value if exclusive_low else low <= value) and value <= high:
            return None
        bound = "greater than" if exclusive_low else "at least"
        return f"must be a number {bound} {low} and at most {high}"

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _must_be_false(reason: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value is False else f"must be false or absent: {reason}"

    return check


def _stop(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return None
    return "must be a string or a list of at most 4 strings"


_RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
_JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})


def _response_format(value: Any) -> str | None:
    if not isinstance(value, dict) or not _is_one_of(value.get("type"), _RESPONSE_FORMAT_TYPES):
        return "must be an object whose type is 'text', 'json_object' or 'json_schema'"
    allowed = {"type", "json_schema"} if value["type"] == "json_schema" else {"type"}
    extra = [key for key in value if key not in allowed]
    if extra:
        return f"unknown field '{_clip(extra[0])}'"
    if value["type"] == "json_schema":
        return _json_schema(value.get("json_schema"))
    return None


def _json_schema(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "json_schema must be an object with 'name' and 'schema'"
    extra = [key for key in spec if key not in _JSON_SCHEMA_KEYS]
    if extra:
        return f"unknown field 'json_schema.{_clip(extra[0])}'"
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        return "json_schema.name must be a non-empty string"
    if not isinstance(spec.get("schema"), dict):
        return "json_schema.schema must be an object"
    problem = schema_problem(spec["schema"])
    if problem is not None:
        return f"json_schema.schema is over a limit: {problem}"
    if "strict" in spec and not isinstance(spec["strict"], bool):
        return "json_schema.strict must be a boolean"
    if "description" in spec and not isinstance(spec["description"], str):
        return "json_schema.description must be a string"
    return None


def _shared_fields(max_tokens_cap: int) -> dict[str, Check]:
    """Sampling fields both endpoints accept."""
    return {
        "max_tokens": _integer(1, max_tokens_cap),
        "temperature": _number(0, 2),
        "top_p": _number(0, 1, exclusive_low=True),
        # vLLM rejects seeds outside int64; catch it here instead of mid-run.
        "seed": _integer(_INT64_MIN, _INT64_MAX),
        "stop": _stop,
        "n": _integer(1, 16),
        "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2),
        "response_format": _response_format,
        "user": _string,
        "stream": _must_be_false("batch requests are not streamed"),
    }


def _chat_fields(max_tokens_cap: int) -> dict[str, Check]:
    return {
        **_shared_fields(max_tokens_cap),
        "max_completion_tokens": _integer(1, max_tokens_cap),
        "logprobs": _boolean,
        "top_logprobs": _integer(0, 20),
        "chat_template_kwargs": _object,
    }


def _completion_fields(max_tokens_cap: int) -> dict[str, Check]:
    # The legacy completions API has no max_completion_tokens, top_logprobs or
    # chat_template_kwargs (vLLM would silently ignore them), and its
    # `logprobs` is the number of top log-probabilities, not a flag.
    return {
        **_shared_fields(max_tokens_cap),
        "logprobs": _integer(0, 20),
        "echo": _must_be_false("echo is not supported"),
    }


# Fields that exist in the OpenAI API but that this service cannot honour; a
# specific reason beats a bare "unknown field".
_UNSUPPORTED_FIELDS: Mapping[str, str] = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "parallel_tool_calls": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "stream_options": "batch requests are not streamed",
}

_ROLES = ("system", "user", "assistant", "developer", "tool")
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_call_id"})
_TOOL_CALL_KEYS = frozenset({"tool_calls", "function_call"})
_CONTENT_HELP = "must be a string or a non-empty list of text parts"


def _messages_problems(messages: Any) -> Iterator[_Problem]:
    if not isinstance(messages, list) or not messages:
        yield _Problem("body.messages", "is required and must be a non-empty list of messages")
        return
    for index, message in enumerate(messages):
        yield from _message_problems(f"body.messages[{index}]", message)


def _message_problems(path: str, message: Any) -> Iterator[_Problem]:
    if not isinstance(message, dict):
        yield _Problem(path, "must be an object with 'role' and 'content'")
        return
    if not _is_one_of(message.get("role"), _ROLES):
        yield _Problem(f"{path}.role", f"must be one of: {', '.join(_ROLES)}")
    for key, value in message.items():
        if key in _TOOL_CALL_KEYS:
            yield _Problem(f"{path}.{key}", "tool calls are not supported")
        elif key not in _MESSAGE_KEYS:
            yield _Problem(f"{path}.{_clip(key)}", "unknown field")
        elif key in ("name", "tool_call_id") and not isinstance(value, str):
            yield _Problem(f"{path}.{key}", "must be a string")
    # Content is required for every role: without tool calls an assistant
    # message with null content has nothing to say.
    yield from _content_problems(f"{path}.content", message.get("content"))


def _content_problems(path: str, content: Any) -> Iterator[_Problem]:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        yield _Problem(path, _CONTENT_HELP)
        return
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            yield _Problem(part_path, 'must be an object like {"type": "text", "text": ...}')
        elif part["type"] != "text":
            kind = _clip(part["type"])
            yield _Problem(
                f"{part_path}.type",
                f"unsupported content part type '{kind}': only text is supported",
            )
        elif not isinstance(part.get("text"), str):
            yield _Problem(f"{part_path}.text", "must be a string")
        elif len(part) > 2:
            extra = next(key for key in part if key not in ("type", "text"))
            yield _Problem(f"{part_path}.{_clip(extra)}", "unknown field")


def _prompt_problems(prompt: Any) -> Iterator[_Problem]:
    if isinstance(prompt, list):
        yield _Problem("body.prompt", "only a single string prompt is supported")
    elif not isinstance(prompt, str) or not prompt:
        yield _Problem("body.prompt", "is required and must be a non-empty string")


def _cross_field_problems(body: dict[str, Any]) -> Iterator[_Problem]:
    # OpenAI rejects this pair; vLLM would silently return no log-probabilities.
    if _is_int(body.get("top_logprobs")) and body["top_logprobs"] > 0 and body.get("logprobs") is not True:
        yield _Problem("body.top_logprobs", "requires logprobs to be true")
    # vLLM refuses several greedy samples: they would all be the same answer.
    if _is_int(body.get("n")) and body["n"] > 1 and body.get("temperature") == 0:
        yield _Problem("body.n", "n > 1 needs temperature > 0 (greedy samples would all be identical)")


class _Endpoint(NamedTuple):
    input_field: str  # "messages" or "prompt": required, checked in depth
    input_problems: Callable[[Any], Iterator[_Problem]]
    fields: Mapping[str, Check]


class _BodyRules:
    """The body checks for one job: its model names and token cap."""

    def __init__(self, model_names: Iterable[str], max_tokens_cap: int) -> None:
        self.model_names = frozenset(model_names)
        self.endpoints = {
            CHAT_URL: _Endpoint("messages", _messages_problems, _chat_fields(max_tokens_cap)),
            COMPLETIONS_URL: _Endpoint("prompt", _prompt_problems, _completion_fields(max_tokens_cap)),
        }

    def problems(self, url: str, body: Any) -> list[_Problem]:
        if not isinstance(body, dict):
            return [_Problem("body", "is required and must be a JSON object")]
        endpoint = self.endpoints.get(url)
        if endpoint is None:
            return [_Problem("url", f"unsupported url '{_clip(url)}'", ErrorCode.UNSUPPORTED_URL)]
        # The model comes first: a request aimed at another model is the most
        # useful thing to tell the user about that line.
        found = list(self._model_problems(body))
        found += endpoint.input_problems(body.get(endpoint.input_field))
        for name, value in body.items():
            if name in ("model", endpoint.input_field):
                continue
            message = self._field_message(endpoint, name, value)
            if message is not None:
                found.append(_Problem(f"body.{_clip(name)}", message))
        found += _cross_field_problems(body)
        return found

    def _model_problems(self, body: dict[str, Any]) -> Iterator[_Problem]:
        if "model" not in body:
            return
        model = body["model"]
        if not isinstance(model, str):
            yield _Problem("body.model", "must be a string")
        elif model not in self.model_names:
            # A local model's name is a server path: the message names the others only.
            expected = " or ".join(f"'{name}'" for name in sorted(self.model_names) if not os.path.isabs(name))
            yield _Problem(
                "body.model",
                f"model '{_clip(model)}' is not this batch's model ({expected})",
                ErrorCode.MODEL_MISMATCH,
            )

    @staticmethod
    def _field_message(endpoint: _Endpoint, name: str, value: Any) -> str | None:
        check = endpoint.fields.get(name)
        if check is not None:
            return check(value)
        return _UNSUPPORTED_FIELDS.get(name, "unknown field")


def validate_body(
    url: str,
    body: Any,
    *,
    model_names: Iterable[str],
    max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
) -> list[tuple[str, str]]:
    """Every problem with a request body, as (param, message); empty when valid."""
    rules = _BodyRules(model_names, max_tokens_cap)
    return [(problem.param, problem.message) for problem in rules.problems(url, body)]


# --- the file -----------------------------------------------------------------

_TOP_LEVEL_KEYS = frozenset({"custom_id", "method", "url", "body"})


class BatchValidator:
    """Validates one batch input file; make one per file (or per pass)."""

    def __init__(
        self,
        *,
        model_names: Iterable[str],
        supported_urls: Iterable[str] = DEFAULT_SUPPORTED_URLS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_lines: int = DEFAULT_MAX_LINES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
        max_errors: int = DEFAULT_MAX_ERRORS,
    ) -> None:
        self.supported_urls = frozenset(supported_urls)
        self.max_file_bytes = max_file_bytes
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self.max_errors = max_errors
        self._rules = _BodyRules(model_names, max_tokens_cap)
        self.report = ValidationReport()

    def validate(self, stream: BinaryIO) -> ValidationReport:
        for _request in self.iter_valid(stream):
            pass
        return self.report

    def iter_valid(self, stream: BinaryIO) -> Iterator[BatchRequest]:
        """Yield valid requests in file order; ``self.report`` is final at the end."""
        self.report = report = ValidationReport()
        # custom_id digest -> line of its first use.  16-byte digests keep the
        # memory per line small and independent of how long the ids are.
        first_seen: dict[bytes, int] = {}
        line_number = 0
        while True:
            # Room for a BOM and a CRLF around a line of exactly max_line_bytes.
            chunk = stream.readline(self.max_line_bytes + _LINE_SLACK)
            if not chunk:
                break
            line_number += 1
            report.bytes_read += len(chunk)
            raw = input_line(chunk, first=line_number == 1)
            too_long = len(raw) > self.max_line_bytes
            if too_long and not chunk.endswith(b"\n"):
                report.bytes_read += self._skip_rest_of_line(stream)
            if report.bytes_read > self.max_file_bytes:
                message = f"file exceeds max_file_bytes={self.max_file_bytes}"
                self._record(LineError(None, ErrorCode.FILE_TOO_LARGE, message))
                return
            if not too_long and not raw.strip():
                continue
            if report.total_lines >= self.max_lines:
                message = f"file exceeds max_lines={self.max_lines}"
                self._record(LineError(None, ErrorCode.TOO_MANY_LINES, message))
                return
            report.total_lines += 1
            if too_long:
                message = f"line exceeds max_line_bytes={self.max_line_bytes}"
                self._record(LineError(line_number, ErrorCode.LINE_TOO_LONG, message))
                continue
            result = self._check_line(line_number, raw, first_seen)
            if isinstance(result, LineError):
                self._record(result)
                continue
            report.valid += 1
            yield result
        if report.total_lines == 0:
            self._record(LineError(None, ErrorCode.EMPTY_FILE, "file contains no requests"))

    def _skip_rest_of_line(self, stream: BinaryIO) -> int:
        """Skip the rest of an over-long line in small chunks; return bytes read."""
        skipped = 0
        # Stop early once the file is over its size limit: a single huge line
        # must not make us read gigabytes before reporting it.
        while self.report.bytes_read + skipped <= self.max_file_bytes:
            piece = stream.readline(_DRAIN_CHUNK_BYTES)
            skipped += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        return skipped

    def _record(self, error: LineError) -> None:
        self.report.error_count += 1
        if error.line is None or len(self.report.errors) < self.max_errors:
            self.report.errors.append(error)

    def _check_line(self, line: int, raw: bytes, first_seen: dict[bytes, int]) -> BatchRequest | LineError:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if not _is_utf8(raw):
                return LineError(line, ErrorCode.INVALID_UTF8, "line is not valid UTF-8")
            message = f"line is not valid JSON: {_clip(exc.msg)} (at character {exc.pos})"
            return LineError(line, ErrorCode.INVALID_JSON, message)
        if not isinstance(obj, dict):
            return LineError(line, ErrorCode.NOT_AN_OBJECT, "line must be a JSON object")
        error = self._custom_id_error(line, obj, first_seen) or self._envelope_error(line, obj)
        if error is not None:
            return error
        problems = self._rules.problems(obj["url"], obj.get("body"))
        if problems:
            first = problems[0]
            return LineError(line, first.code, f"{first.param}: {first.message}", first.param)
        return BatchRequest(
            line=line,
            custom_id=obj["custom_id"],
            url=obj["url"],
            body=obj["body"],
            raw=raw,
        )

    def _custom_id_error(self, line: int, obj: dict[str, Any], first_seen: dict[bytes, int]) -> LineError | None:
        if "custom_id" not in obj:
            return LineError(line, ErrorCode.MISSING_CUSTOM_ID, "custom_id is required", "custom_id")
        custom_id = obj["custom_id"]
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
            message = f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID_CHARS} characters"
            return LineError(line, ErrorCode.INVALID_CUSTOM_ID, message, "custom_id")
        digest = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=16).digest()
        first = first_seen.setdefault(digest, line)
        if first != line:
            message = f"custom_id '{_clip(custom_id)}' was already used on line {first}"
            return LineError(line, ErrorCode.DUPLICATE_CUSTOM_ID, message, "custom_id")
        return None

    def _envelope_error(self, line: int, obj: dict[str, Any]) -> LineError | None:
        if obj.get("method") != "POST":
            return LineError(line, ErrorCode.INVALID_METHOD, 'method must be "POST"', "method")
        url = obj.get("url")
        if not _is_one_of(url, self.supported_urls):
            supported = ", ".join(sorted(self.supported_urls))
            return LineError(
                line,
                ErrorCode.UNSUPPORTED_URL,
                f"url must be one of: {supported}",
                "url",
            )
        extra = next((key for key in obj if key not in _TOP_LEVEL_KEYS), None)
        if extra is not None:
            message = f"unknown field '{_clip(extra)}': a line holds only custom_id, method, url and body"
            return LineError(line, ErrorCode.UNKNOWN_FIELD, message, _clip(extra))
        return None


def input_line(chunk: bytes, *, first: bool) -> bytes:
    """A line of an input file as its request: without its LF or CRLF, and, on
    the first line, without the BOM Windows editors like to add (JSON forbids it).
    Every reader of input files (validation, the retry of failed requests) reads
    lines through this, so they cannot disagree about what a line holds."""
    if chunk.endswith(b"\r\n"):
        chunk = chunk[:-2]
    elif chunk.endswith(b"\n"):
        chunk = chunk[:-1]
    return chunk.removeprefix(_UTF8_BOM) if first else chunk


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
