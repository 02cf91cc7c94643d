"""How the API reads what a client sends: every body read bounded in size,
depth and time, and every way a body can be unreadable answered with the JSON
envelope (a 4xx naming the problem), never a 500 or an empty form."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Request, Response, current_app, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest, RequestTimeout

from batchsvc import bounded_json
from batchsvc.errors import ErrorType, ServiceError


class ApiRequest(Request):
    """A request whose multipart parsing fails loudly: Werkzeug's default drops
    every part of a body it cannot parse (say, a filename that is not UTF-8),
    and the view would then blame a missing field."""

    def make_form_data_parser(self) -> Any:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except UnicodeDecodeError:
            message = "the multipart body cannot be read: part headers (names, filenames) must be UTF-8"
            raise BadRequest(message) from None
        except ValueError:
            raise BadRequest("the multipart body is malformed") from None


class _GuardedInput:
    """wsgi.input whose read errors are the client's, not the server's: a body
    that stops arriving is a 408, a broken chunked encoding or a body cut short a 400."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _guard(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except TimeoutError:
            raise RequestTimeout("the request body stopped arriving") from None
        except (OSError, ValueError) as exc:
            raise BadRequest(f"the request body cannot be read ({_reason(exc)})") from None
        except Exception as exc:
            # The HTTP server's own parse errors (gunicorn's InvalidChunkSize, ...).
            if type(exc).__module__.startswith("gunicorn."):
                raise BadRequest(f"the request body cannot be read ({_reason(exc)})") from None
            raise

    def read(self, *args: Any) -> bytes:
        return self._guard(self._stream.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._guard(self._stream.readline, *args)

    def readlines(self, *args: Any) -> list[bytes]:
        return self._guard(self._stream.readlines, *args)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _reason(exc: Exception) -> str:
    # A class name says what went wrong without quoting anything of the server.
    names = {"InvalidChunkSize": "invalid chunk size", "ChunkMissingTerminator": "chunk without terminator"}
    return names.get(type(exc).__name__, "malformed or incomplete body")


def guard_input(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if "wsgi.input" in environ:
            environ["wsgi.input"] = _GuardedInput(environ["wsgi.input"])
        return wsgi_app(environ, start_response)

    return app


def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object: at most max_json_body_bytes, nested at
    most bounded_json.MAX_BODY_DEPTH deep, or a 4xx saying which rule it breaks.
    With `optional`, an empty body is an empty object."""
    limit = current_app.extensions["batchsvc"].settings.max_json_body_bytes
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(
            ErrorType.PAYLOAD_TOO_LARGE,
            f"a JSON request body may be at most max_json_body_bytes={limit} bytes",
            {"limit": "max_json_body_bytes", "max": limit},
        )
    if optional and not data.strip():
        return {}
    try:
        body = bounded_json.loads(data)
    except bounded_json.JSONRefused as exc:
        raise ServiceError(ErrorType.INVALID_REQUEST, f"request body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ServiceError(ErrorType.INVALID_REQUEST, "request body must be a JSON object")
    return body


def single_values(form: MultiDict[str, Any], what: str = "field") -> dict[str, Any]:
    """A form (or its files) as a plain dict, refusing a name given twice: which
    of two `file` parts was meant is not ours to guess."""
    for name in form:
        if len(form.getlist(name)) > 1:
            raise ServiceError(
                ErrorType.VALIDATION,
                f"the {what} {name!r} is given more than once",
                {"fields": {name: ["give it once"]}},
            )
    return form.to_dict()


def options_response(app: Flask) -> Response:
    """OPTIONS: the methods of the URL, as JSON (Flask's default is an empty text/html)."""
    adapter = app.create_url_adapter(request)
    methods = sorted(adapter.allowed_methods()) if adapter is not None else []
    response = jsonify({"allow": methods})
    response.headers["Allow"] = ", ".join(methods)
    return response
