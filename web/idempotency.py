"""`Idempotency-Key` on the submission POSTs (/v1/batch, /v1/files, /v1/batches).

A client that never got its answer (a dropped connection, a timeout) retries;
the official `openai` client does so by itself, twice by default, and sends no
key of its own (pass one with `extra_headers`). With a key, the retry answers
what the first request answered (the same job or file id), for
`idempotency_ttl_s` (24 h), per tenant:

- the same key with a different request (another body, another file) is a 422
  naming the header: the key was reused by mistake;
- the same key while the first request is still running waits up to
  `IN_FLIGHT_WAIT_S` for its answer, then answers 409 (retry later), so two
  concurrent duplicates make one job;
- a first request that failed (any non-2xx) leaves nothing behind: its retry
  runs afresh.
A replayed answer carries `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, current_app, make_response, request

from batchsvc.errors import ErrorType, ServiceError
from web.auth import current_key

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
IN_FLIGHT_WAIT_S = 10.0


def _checked_key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ServiceError(
            ErrorType.INVALID_REQUEST,
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            {"header": HEADER},
        )
    return key


def fingerprint() -> str:
    """What makes two requests the same: method, path, and the body (JSON by its
    content, forms by their fields, uploads by their bytes, streamed)."""
    digest = hashlib.sha256(f"{request.method} {request.path}\0".encode())
    if request.mimetype == "multipart/form-data":
        for name, value in sorted(request.form.items(multi=True)):
            digest.update(f"{name}={value}\0".encode())
        for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
            digest.update(f"file {name} {upload.filename}\0".encode())
            while chunk := upload.stream.read(1 << 20):
                digest.update(chunk)
            upload.stream.seek(0)
    else:
        # Read as the view will (bounded: web/request.py), then hand the view the same bytes.
        limit = current_app.extensions["batchsvc"].settings.max_json_body_bytes
        data = request.stream.read(limit + 1)
        request.stream = io.BytesIO(data)  # type: ignore[misc]
        # Not JSON: the view says what is wrong with it, and the bytes are the fingerprint.
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS)
        digest.update(data)
    return digest.hexdigest()


def idempotent(route: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a POST view answer a retried request with its first answer (after `requires`)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = _checked_key()
            if key is None:
                return view(*args, **kwargs)
            store = current_app.extensions["batchsvc"].idempotency
            tenant = current_key().tenant
            mine = fingerprint()
            deadline = time.monotonic() + IN_FLIGHT_WAIT_S
            while True:
                claim = store.claim(tenant, route, key, mine)
                if claim.state != "claimed" and claim.fingerprint != mine:
                    raise ServiceError(
                        ErrorType.VALIDATION,
                        f"this {HEADER} was already used with a different request; use a new key for a new request",
                        {"header": HEADER},
                    )
                if claim.state == "claimed":
                    break
                if claim.state == "done":
                    replay = Response(claim.body, status=claim.status, mimetype="application/json")
                    replay.headers["Idempotent-Replayed"] = "true"
                    return replay
                if time.monotonic() > deadline:
                    raise ServiceError(
                        ErrorType.CONFLICT,
                        f"a request with this {HEADER} is still being processed; retry shortly",
                        {"header": HEADER},
                        headers={"Retry-After": "1", "x-should-retry": "true"},
                    )
                time.sleep(0.05)
            try:
                response = make_response(view(*args, **kwargs))
            except BaseException:
                store.release(tenant, route, key, mine)
                raise
            if 200 <= response.status_code < 300:
                store.complete(tenant, route, key, mine, response.status_code, response.get_data())
            else:
                store.release(tenant, route, key, mine)
            return response

        return wrapper

    return decorate
