"""One error vocabulary for the whole service.

The web layer turns every `ServiceError` (and every HTTP error) into the envelope
`{"error": {"type", "message", "details"}}`; the type decides the status code.
"""

from __future__ import annotations

import re
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any


class ErrorType(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    CONFLICT = "conflict"
    GONE = "gone"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    URI_TOO_LONG = "uri_too_long"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION = "validation_error"
    RATE_LIMITED = "rate_limited"
    HEADERS_TOO_LARGE = "headers_too_large"
    INTERNAL = "internal_error"
    NOT_IMPLEMENTED = "not_implemented"
    UNAVAILABLE = "service_unavailable"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @classmethod
    def for_status(cls, status: int) -> ErrorType:
        """The type of an HTTP error status; a status without a type of its own is
        internal (5xx) or a plain invalid request (4xx)."""
        for type_, code in _STATUS.items():
            if code == status:
                return type_
        return cls.INTERNAL if status >= 500 else cls.INVALID_REQUEST


_STATUS = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.REQUEST_TIMEOUT: 408,
    ErrorType.CONFLICT: 409,
    ErrorType.GONE: 410,
    ErrorType.PAYLOAD_TOO_LARGE: 413,
    ErrorType.URI_TOO_LONG: 414,
    ErrorType.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorType.VALIDATION: 422,
    ErrorType.RATE_LIMITED: 429,
    ErrorType.HEADERS_TOO_LARGE: 431,
    ErrorType.INTERNAL: 500,
    ErrorType.NOT_IMPLEMENTED: 501,
    ErrorType.UNAVAILABLE: 503,
}


# Where the server keeps its code, venv and temporary files: never shown to a client.
_SERVER_ROOTS = sorted(
    {
        str(Path(__file__).resolve().parent.parent),
        sys.prefix,
        str(Path(sys.prefix).resolve()),
        sys.base_prefix,
        tempfile.gettempdir(),
    },
    key=len,
    reverse=True,
)
_SERVER_PATH = re.compile("|".join(re.escape(root) + r"(?:/[^\s'\"]*)?" for root in _SERVER_ROOTS))


def without_server_paths(text: str) -> str:
    """`text` with every path under the server's own directories replaced by '<server path>'
    (an engine's or a library's message can quote one)."""
    return _SERVER_PATH.sub("<server path>", text)


class ServiceError(Exception):
    """An error a client should see, with a type and the field or line at fault."""

    def __init__(
        self,
        type_: ErrorType,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.details = details or {}
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def to_dict(self) -> dict[str, Any]:
        message = without_server_paths(self.message)
        return {"error": {"type": self.type.value, "message": message, "details": self.details}}


class JobNotFound(ServiceError):
    def __init__(self, job_id: str):
        super().__init__(ErrorType.NOT_FOUND, f"no batch job with id {job_id!r}", {"job_id": job_id})
