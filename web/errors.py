"""One JSON error envelope for every error the API can produce, made here only."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, g, has_request_context, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.storage.base import StorageUnavailable

log = logging.getLogger(__name__)


def error_response(error: ServiceError) -> tuple[Response, int]:
    response = jsonify(error.to_dict())
    response.headers.update(error.headers)
    if "Retry-After" in error.headers and has_request_context():
        g.retry_after = error.headers["Retry-After"]  # the rate limiter's header hook must not replace it
    return response, error.type.status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        return error_response(error)

    @app.errorhandler(ValidationError)
    def _validation_error(error: ValidationError):
        fields = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        first = next(iter(fields), None)
        message = "invalid request"
        if first and first != "_schema":
            reason = fields[first]
            while isinstance(reason, (list, dict)) and reason:  # nested schemas nest their messages
                reason = reason[0] if isinstance(reason, list) else next(iter(reason.values()))
            message = f"invalid field {first!r}: {reason}" if isinstance(reason, str) else f"invalid field {first!r}"
        return error_response(ServiceError(ErrorType.VALIDATION, message, {"fields": fields}))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        type_ = ErrorType.for_status(status)
        response, _ = error_response(ServiceError(type_, error.description or error.name))
        # Keep what the error says in headers (Allow on 405, Retry-After on 429).
        for name, value in error.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, status

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(StorageUnavailable)
    def _backend_down(error: Exception):
        # Redis or storage is unreachable: nothing the client sent is wrong, and a retry may work.
        log.warning("backend unavailable: %s", type(error).__name__)
        return error_response(
            ServiceError(
                ErrorType.UNAVAILABLE,
                "the service's state store or storage is unreachable; retry shortly",
                headers={"Retry-After": "5"},
            )
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        # The traceback goes to the log (and Sentry), never to the client.
        log.exception("unhandled error")
        return error_response(ServiceError(ErrorType.INTERNAL, "internal error"))
