"""The HTTP server the Procfile runs: gunicorn, configured here
(`gunicorn --config python:web.server 'web:create_app()'`).

Gevent workers: a connection costs a greenlet, not a thread, so clients that send
slowly (or hold idle connections) cannot take the API's threads away from
/healthz and everyone else. In a deployment a buffering reverse proxy (nginx,
deploy/) sits in front as well; this keeps the embedded stack (`make up`) and a
proxy that lets a slow body through responsive too.

`EnvelopeWorker` answers what gunicorn refuses before Flask ever runs (a request
line or headers too long, a bad Content-Length, TE with CL, NUL bytes) with the
same JSON envelope as the app, instead of gunicorn's HTML page, and gives every
read of a request body a timeout."""

from __future__ import annotations

import orjson
from gunicorn.http import errors as http_errors
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.settings import get_settings

# --- gunicorn settings (read by `--config python:web.server`) -------------------------------
worker_class = "web.server.EnvelopeWorker"
workers = 2
worker_connections = 1000  # per worker: open connections, slow ones included
timeout = 120  # the arbiter restarts a worker silent this long
# How long a kept-alive connection may wait for its next request, and (gevent) how
# long a request's line and headers may take to arrive: a slow-headers client is cut.
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn's control socket is one path per user ($HOME/.gunicorn): two servers on a
# host would take it from each other, and nothing here uses it.
control_socket_disable = True

# What gunicorn refuses, as (error type, message). Messages say what is wrong, never
# echo the request (it may be huge, or binary).
_REFUSALS: list[tuple[type[Exception], ErrorType, str]] = [
    (http_errors.LimitRequestLine, ErrorType.URI_TOO_LONG, "the request line is longer than 8190 bytes"),
    (http_errors.LimitRequestHeaders, ErrorType.HEADERS_TOO_LARGE, "the request headers are too large or too many"),
    (http_errors.UnsupportedTransferCoding, ErrorType.NOT_IMPLEMENTED, "unsupported Transfer-Encoding"),
    (http_errors.ForbiddenProxyRequest, ErrorType.FORBIDDEN, "proxy requests are not accepted from this address"),
    (http_errors.InvalidRequestLine, ErrorType.INVALID_REQUEST, "malformed request line"),
    (http_errors.InvalidRequestMethod, ErrorType.INVALID_REQUEST, "invalid request method"),
    (http_errors.InvalidHTTPVersion, ErrorType.INVALID_REQUEST, "unsupported HTTP version"),
    (http_errors.InvalidHeaderName, ErrorType.INVALID_REQUEST, "invalid header name"),
    (http_errors.InvalidHeader, ErrorType.INVALID_REQUEST, "invalid header (bad Content-Length, TE with CL, NUL, ...)"),
    (http_errors.ObsoleteFolding, ErrorType.INVALID_REQUEST, "obsolete header line folding"),
    (http_errors.InvalidChunkSize, ErrorType.INVALID_REQUEST, "invalid chunk size in a chunked body"),
    (http_errors.ChunkMissingTerminator, ErrorType.INVALID_REQUEST, "chunk without terminator in a chunked body"),
    (http_errors.InvalidChunkExtension, ErrorType.INVALID_REQUEST, "invalid chunk extension in a chunked body"),
    (http_errors.ExpectationFailed, ErrorType.INVALID_REQUEST, "unsupported Expect header"),
    (http_errors.ParseException, ErrorType.INVALID_REQUEST, "malformed request"),
]


def refusal(exc: BaseException) -> ServiceError:
    """The envelope for an error gunicorn raised before (or around) the app."""
    for kind, type_, message in _REFUSALS:
        if isinstance(exc, kind):
            return ServiceError(type_, message)
    return ServiceError(ErrorType.INTERNAL, "internal error")


def envelope_bytes(error: ServiceError) -> bytes:
    body = orjson.dumps(error.to_dict())
    status = error.type.status
    head = (
        f"HTTP/1.1 {status} {error.type.value.replace('_', ' ')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class EnvelopeWorker(GeventWorker):
    def init_process(self) -> None:
        # Seconds a read of a request body may wait for more bytes (then: a 408).
        self.body_timeout_s = get_settings().http_body_timeout_s
        super().init_process()

    def handle(self, listener, client, addr):  # type: ignore[no-untyped-def]
        # GeventWorker.handle makes the socket blocking with no timeout: give
        # every read (the body's above all) one instead.
        client.settimeout(self.body_timeout_s)
        AsyncWorker.handle(self, listener, client, addr)

    def handle_error(self, req, client, addr, exc):  # type: ignore[no-untyped-def]
        error = refusal(exc)
        if error.type is ErrorType.INTERNAL:
            self.log.exception("error handling a request")
        else:
            self.log.info("refused a request from %s: %s", (addr or ("",))[0], error.message)
        try:
            client.sendall(envelope_bytes(error))
        except OSError:
            self.log.debug("could not send the refusal")
