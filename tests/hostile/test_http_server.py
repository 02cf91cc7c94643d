"""The HTTP server as the Procfile runs it (issue 9, rows 4, 6, 15, 16): what it
refuses before Flask runs is the JSON envelope too, a body that stops arriving is
a 408, and slow clients do not hang the API."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.hostile.conftest import Served, serve

HEADERS_OF_A_SUBMIT = "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: {ct}\r\n"


def exchange(served: Served, raw: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the server closes or says its length)."""
    with socket.create_connection((served.host, served.port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def assert_envelope(answer: tuple[int, dict[str, str], bytes], status: int, type_: str) -> dict:
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    error = orjson.loads(body)["error"]
    assert error["type"] == type_ and error["message"] and isinstance(error["details"], dict)
    return error


@pytest.mark.parametrize(
    ("raw", "status", "type_"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"A" * 65536 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /v1/batch/" + b"b" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "invalid_request"),
        (
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "invalid_request",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", 400, "invalid_request"),
        (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    ],
    ids=["431-headers", "414-url", "400-content-length", "400-te-and-cl", "400-nul", "400-request-line", "400-ver"],
)
def test_what_the_http_server_refuses_is_the_json_envelope(served: Served, raw: bytes, status: int, type_: str) -> None:
    assert_envelope(exchange(served, raw), status, type_)


def test_options_over_the_real_server_is_json(served: Served) -> None:
    status, headers, body = exchange(served, b"OPTIONS /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and headers["content-type"] == "application/json"
    assert "GET" in orjson.loads(body)["allow"]


def test_a_bad_chunk_size_is_a_400(served: Served) -> None:
    head = HEADERS_OF_A_SUBMIT.format(key=served.key, ct="application/json")
    raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"ZZ\r\n[1]\r\n0\r\n\r\n"
    error = assert_envelope(exchange(served, raw), 400, "invalid_request")
    assert "chunk" in error["message"]


def test_an_oversized_chunked_json_body_is_a_413(served: Served) -> None:
    head = HEADERS_OF_A_SUBMIT.format(key=served.key, ct="application/json")
    payload = b'{"model": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in _pieces(payload, 64 * 1024))
    raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    error = assert_envelope(exchange(served, raw), 413, "payload_too_large")
    assert error["details"]["limit"] == "max_json_body_bytes"


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def healthz_seconds(served: Served) -> float:
    started = time.monotonic()
    status, _, _ = exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=10)
    assert status == 200
    return time.monotonic() - started


def test_healthz_stays_fast_while_200_slow_clients_hold_their_connections(
    served: Served, record_property: pytest.RecordProperty
) -> None:
    head = HEADERS_OF_A_SUBMIT.format(key=served.key, ct="application/json") + "Content-Length: 1000\r\n\r\n"
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection((served.host, served.port), timeout=10)
            sock.sendall(head.encode() + b"{")  # one byte of a 1000-byte body, then nothing
            slow.append(sock)
        time.sleep(0.5)  # let the server take them all in (nothing to poll for: they send nothing more)
        latencies = sorted(healthz_seconds(served) for _ in range(5))
    finally:
        for sock in slow:
            sock.close()
    record_property("healthz_s_with_200_slow_clients", latencies)
    print(f"/healthz with 200 slow connections open: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    # The target is < 1 s. The median is judged, so that one probe delayed by the
    # other work on a shared CI machine does not decide; a hung API (the bug) never answers.
    assert latencies[2] < 1.0 and latencies[-1] < 5.0, latencies


@pytest.fixture(scope="module")
def served_short_timeout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # http_body_timeout_s lowered from 30 s to 2 s only so that CI need not wait 30 s for the 408.
    yield from serve(tmp_path_factory.mktemp("served-short"), http_body_timeout_s=2.0)


def test_a_body_that_stops_arriving_is_a_408(served_short_timeout: Served) -> None:
    served = served_short_timeout
    head = HEADERS_OF_A_SUBMIT.format(key=served.key, ct="application/json") + "Content-Length: 1000\r\n\r\n"
    started = time.monotonic()
    assert_envelope(exchange(served, head.encode() + b"{", timeout=20), 408, "request_timeout")
    assert time.monotonic() - started < 10
    assert "Traceback" not in served.log()


def test_at_the_shipped_default_a_stalled_body_is_a_408_after_30_seconds(served: Served) -> None:
    """The server as shipped (http_body_timeout_s 30 s): the stalled client waits out the
    real default, then gets the envelope, and the server is free again."""
    head = HEADERS_OF_A_SUBMIT.format(key=served.key, ct="application/json") + "Content-Length: 1000\r\n\r\n"
    started = time.monotonic()
    assert_envelope(exchange(served, head.encode() + b"{", timeout=90), 408, "request_timeout")
    assert time.monotonic() - started >= 29  # the default decided, not something shorter
