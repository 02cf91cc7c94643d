"""OpenAI batch output lines: `{id, custom_id, response: {status_code, request_id, body}, error}`.

Ids are derived from the job and custom_id, so a re-run of a request writes the
same ids and a duplicate is recognisable.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the k most likely tokens at this position


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # only when the request asked for them


def _chat_logprobs(tokens: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [{**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def _completion_logprobs(tokens: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    offsets, offset = [], 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


@dataclass(frozen=True)
class RequestFailure:
    """A request the engine refused or could not run; it becomes an error line."""

    code: str
    message: str
    status_code: int = 400
    param: str | None = None


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def line_ids(job_id: str, custom_id: str) -> tuple[str, str]:
    """(batch request id, response request id) for a request of a job."""
    d = _digest(job_id, custom_id)
    return f"batch_req_{d}", f"req_{d}"


def completion_body(
    *,
    url: str,
    job_id: str,
    custom_id: str,
    model: str,
    choices: list[Choice],
    prompt_tokens: int,
    cached_tokens: int = 0,
    created: int | None = None,
) -> dict[str, Any]:
    """A `chat.completion` or `text_completion` response body, as OpenAI shapes it."""
    completion_tokens = sum(c.completion_tokens for c in choices)
    created = int(time.time()) if created is None else created
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        # Prompt tokens the engine's prefix cache already held (vLLM's num_cached_tokens).
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    digest = _digest(job_id, custom_id)
    if url == CHAT_URL:
        return {
            "id": f"chatcmpl-{digest}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": _chat_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": usage,
        }
    return {
        "id": f"cmpl-{digest}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": _completion_logprobs(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage,
    }


def _with_attempts(line: dict[str, Any], attempts: int) -> dict[str, Any]:
    # Beyond OpenAI's shape, and only when it says something: the request ran again.
    if attempts > 1:
        line["attempts"] = attempts
    return line


def success_line(job_id: str, custom_id: str, body: dict[str, Any], attempts: int = 1) -> dict[str, Any]:
    line_id, request_id = line_ids(job_id, custom_id)
    return _with_attempts(
        {
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body},
            "error": None,
        },
        attempts,
    )


def rejected_line(job_id: str, custom_id: str, failure: RequestFailure, attempts: int = 1) -> dict[str, Any]:
    """The engine answered this request with an error (e.g. prompt too long)."""
    line_id, request_id = line_ids(job_id, custom_id)
    kind = "server_error" if failure.status_code >= 500 else "invalid_request_error"
    error = {"message": failure.message, "type": kind, "param": failure.param, "code": failure.code}
    return _with_attempts(
        {
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": failure.status_code, "request_id": request_id, "body": {"error": error}},
            "error": None,
        },
        attempts,
    )


def reused_line(job_id: str, custom_id: str, source: dict[str, Any], source_job_id: str) -> dict[str, Any]:
    """The answer of an identical request (same fingerprint) of an earlier job,
    as this job's line: its own ids and custom_id, marked with where it came from."""
    line_id, request_id = line_ids(job_id, custom_id)
    response = {**source["response"], "request_id": request_id}
    line = {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
    line["fingerprint"] = source["fingerprint"]
    line["reused_from"] = source_job_id
    return line


def not_run_line(job_id: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """The request never got a response (shard lost, job cancelled or expired)."""
    line_id, _ = line_ids(job_id, custom_id)
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


@dataclass
class Tally:
    """Counts over output lines: a shard's progress, a job's stats."""

    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0  # of the lines this job computed: a reused line counts in `reused` only
    completion_tokens: int = 0
    cached_tokens: int = 0
    reused: int = 0
    latency_sum: float = 0.0  # seconds, over the successes whose latency is known
    latency_count: int = 0  # ... and how many those are (not lines read back from a checkpoint)

    def add(self, line: dict[str, Any], latency: float | None = None) -> bool:
        """Count one line; True if it is a success."""
        if not is_success(line):
            self.failed += 1
            return False
        self.succeeded += 1
        if line.get("reused_from"):
            self.reused += 1
            return True
        p, c = usage_of(line)
        self.prompt_tokens += p
        self.completion_tokens += c
        details = line["response"]["body"].get("usage", {}).get("prompt_tokens_details") or {}
        self.cached_tokens += int(details.get("cached_tokens") or 0)
        if latency is not None:
            self.latency_sum += latency
            self.latency_count += 1
        return True

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


def is_success(line: dict[str, Any]) -> bool:
    response = line.get("response")
    return line.get("error") is None and response is not None and response.get("status_code") == 200


def error_code(line: dict[str, Any]) -> str | None:
    """The code of a failed line (an engine refusal or a request that never ran); None for a success."""
    if is_success(line):
        return None
    error = line.get("error") or ((line.get("response") or {}).get("body") or {}).get("error") or {}
    return str(error.get("code") or "unknown")


def usage_of(line: dict[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a success line; zeros otherwise."""
    if not is_success(line):
        return 0, 0
    usage = line["response"]["body"].get("usage") or {}
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
