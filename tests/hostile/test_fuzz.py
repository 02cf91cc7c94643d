"""A bounded fuzz of the HTTP layer (issue 9): random methods, paths, ids, query
strings, content types and bodies against every route, as a careless or hostile
client would send them. The invariants: no 5xx, every error is the JSON envelope,
and /healthz stays fast. Seeded, so a failure reproduces; a few hundred requests,
so it costs seconds. (schemathesis takes over once the OpenAPI document exists.)"""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any

import orjson
import pytest
from flask import Flask

from batchsvc.access import Role
from tests.hostile.conftest import Served

ROUTES = [
    "/v1/batch",
    "/v1/batch/{id}",
    "/v1/batch/{id}/results",
    "/v1/batch/{id}/partial",
    "/v1/batch/{id}/retry",
    "/v1/batch/{id}/cancel",
    "/v1/batches",
    "/v1/batches/{id}",
    "/v1/batches/{id}/cancel",
    "/v1/files",
    "/v1/files/{id}",
    "/v1/files/{id}/content",
    "/v1/downloads/{id}",
    "/v1/keys",
    "/v1/keys/{id}",
    "/v1/tenants/{id}",
    "/v1/tenants/{id}/webhook_secret",
    "/healthz",
    "/readyz",
    "/metrics",
    "/nope",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
CONTENT_TYPES = [
    "application/json",
    "multipart/form-data; boundary=XX",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
]


def junk(rng: random.Random) -> str:
    pick = rng.randrange(8)
    if pick == 0:
        return "batch_" + "".join(rng.choice("0123456789abcdef") for _ in range(32))
    if pick == 1:
        return "x" * rng.choice([1, 255, 2000])
    if pick == 2:
        return "%00%ff%2e%2e%2f" * rng.randrange(1, 4)
    if pick == 3:
        return "\u202e\U0001f600é" * rng.randrange(1, 5)
    if pick == 4:
        return "../" * rng.randrange(1, 6) + "etc/passwd"
    if pick == 5:
        return str(rng.choice([-1, 0, 2**64, 10**400]))
    if pick == 6:
        return "file-" + "".join(rng.choice("abcdef0123") for _ in range(24))
    return "".join(chr(rng.randrange(33, 0x2FF)) for _ in range(rng.randrange(1, 20)))


def json_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.choice([0, -1, 2**63, 10**30, 1.5, -1e308])
    if pick == 2:
        return junk(rng)
    if pick == 3:
        return rng.choice(["tiny-random", "24h", "3000000d", "https://example.com/x", "http://127.0.0.1:1/"])
    if pick in (4, 5):
        return ""
    if pick == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["model", "input_file_url", "completion_window", "metadata", "input_file_id", "endpoint", "tenant", "role"]
    return {rng.choice([*keys, junk(rng)]): json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def body(rng: random.Random, content_type: str) -> bytes:
    pick = rng.randrange(6)
    if pick == 0:
        return b""
    if pick == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if pick == 2:
        return b"[" * 5000 + b"]" * 5000
    if content_type.startswith("multipart"):
        disposition = b'form-data; name="' + junk(rng).encode() + b'"; filename="'
        disposition += rng.choice([b"a.jsonl", b"\xff\xfe", b""]) + b'"'
        return b"--XX\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + dumps(rng) + b"\r\n--XX--\r\n"
    return dumps(rng)


def dumps(rng: random.Random) -> bytes:
    # json, not orjson: it writes what orjson refuses (integers past 64 bits).
    return json.dumps(json_value(rng)).encode()


def requests(seed: int, count: int) -> list[tuple[str, str, str, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        path = rng.choice(ROUTES).replace("{id}", junk(rng).replace("/", "%2F").replace("?", "%3F").replace("#", "%23"))
        if rng.random() < 0.4:
            path += "?" + "&".join(
                f"{rng.choice(['limit', 'after', 'scope', 'partial', 'kind', 'tenant', junk(rng)])}={junk(rng)}"
                for _ in range(rng.randrange(1, 4))
            )
        content_type = rng.choice(CONTENT_TYPES)
        out.append((rng.choice(METHODS), path, content_type, body(rng, content_type)))
    return out


def assert_envelope(status: int, content_type: str, data: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {data[:300]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), f"{what}: {status} {content_type}"
        if what.startswith("HEAD "):
            return  # the headers of the envelope, without its body
        error = orjson.loads(data)["error"]
        assert isinstance(error["type"], str) and isinstance(error["message"], str), what
        assert "Traceback" not in error["message"], what


@pytest.mark.parametrize("role", [Role.SUBMITTER, Role.ADMIN, None], ids=["submitter", "admin", "no-key"])
def test_fuzzed_requests_never_get_a_5xx_or_anything_but_the_envelope(make_app: Any, role: Role | None) -> None:
    app: Flask = make_app(role=role)
    client = app.test_client()
    for method, path, content_type, data in requests(seed=9 + len(str(role)), count=250):
        response = client.open(path, method=method, data=data, content_type=content_type or None)
        assert_envelope(response.status_code, response.mimetype or "", response.get_data(), f"{method} {path}")


def test_fuzzed_raw_requests_against_the_real_server(served: Served) -> None:
    """The same requests, written raw to the server the Procfile runs, half with a key,
    and with /healthz timed between them."""
    slowest, resets, answered = 0.0, 0, 0
    for number, (method, path, content_type, data) in enumerate(requests(seed=77, count=150)):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if number % 2:
            head += f"Authorization: Bearer {served.key}\r\n"
        raw = head.encode("utf-8", errors="surrogateescape") + b"\r\n" + data
        try:
            status, headers, answer = _exchange(served, raw)
        except ConnectionResetError:
            # A refusal made before the body was read (401, 415, ...) closes the connection
            # with the body unread, which Linux answers with a reset that can overtake the
            # refusal. Known and reported (issue 9 report); a buffering proxy drains first.
            resets += 1
            continue
        answered += 1
        assert_envelope(status, headers.get("content-type", ""), answer, f"{method} {path}")
        if number % 25 == 0:
            started = time.monotonic()
            assert _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.0, slowest
    assert answered >= 100, (answered, resets)


def _exchange(served: Served, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((served.host, served.port), timeout=30) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, answer
