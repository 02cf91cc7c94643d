"""The buffering reverse proxy (deploy/k8s/base/nginx.conf.template), run for real: a
slow client's request reaches the backend only once it is whole, nginx's own refusals
are the API's JSON envelope, and the API sees the client's address through one hop."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from batchsvc.errors import ErrorType
from batchsvc.settings import PROJECT_ROOT
from batchsvc.store.keys import Role
from tests.support.client import grant
from tests.support.stack import wait_until

TEMPLATE = PROJECT_ROOT / "deploy/k8s/base/nginx.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Backend:
    """A stand-in for gunicorn that records each request as it arrives, whole or not."""

    sock: socket.socket
    requests: list[bytes] = field(default_factory=list)
    accepted: int = 0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def stop(self) -> None:
        """Stop listening; shutdown() also wakes the accept() blocked in serve()."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def backend() -> Iterator[Backend]:
    sock = socket.create_server(("127.0.0.1", 0))
    server = Backend(sock)
    threading.Thread(target=server.serve, daemon=True).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(tmp_path: Path, backend: Backend) -> Iterator[int]:
    """nginx on the shipped server block; only its listen port is changed, to a free one."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx is missing: scripts/setup.sh installs it (apt nginx-light)")
    port = free_port()
    server = TEMPLATE.read_text().replace("${BATCHSVC_UPSTREAM}", f"127.0.0.1:{backend.port}")
    assert "listen 8080;" in server
    (tmp_path / "default.conf").write_text(server.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    temp = "\n".join(
        f"  {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # its workers write the buffered bodies under tmp_path
        + f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\nworker_processes 1;\n"
        + "events { worker_connections 64; }\n"
        + f"http {{\n  access_log off;\n{temp}\n  include {tmp_path}/default.conf;\n}}\n"
    )
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"])
    try:
        wait_until(lambda: _connects(port), 10, what="nginx listening")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response, read up to its Content-Length (nginx may linger before it closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_a_slow_upload_reaches_the_backend_only_when_whole(proxy: int, backend: Backend) -> None:
    body = b"x" * 2_000_000  # past client_body_buffer_size: nginx spools it to a file
    with socket.create_connection(("127.0.0.1", proxy)) as client:
        client.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: batch\r\nConnection: close\r\n")
        client.sendall(f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1_000_000])
        # The slow client pauses mid-body. This pause is the behaviour under test: during it,
        # nothing may reach the backend (there is no event to wait for in an absence).
        time.sleep(0.5)
        assert backend.accepted == 0
        client.sendall(body[1_000_000:])
        status, _, answer = read_response(client)
    assert (status, answer) == (200, b"ok")
    (request,) = backend.requests
    assert request.endswith(body) and b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in request


def test_nginx_refusals_are_the_apis_json_envelope(proxy: int, backend: Backend) -> None:
    with socket.create_connection(("127.0.0.1", proxy)) as client:
        client.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: batch\r\nContent-Length: 211812353\r\n\r\n")
        status, headers, body = read_response(client)
    assert status == 413 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["type"] == "payload_too_large"
    assert backend.accepted == 0

    backend.stop()  # gunicorn is down
    with socket.create_connection(("127.0.0.1", proxy)) as client:
        client.sendall(b"GET /v1/batch HTTP/1.1\r\nHost: batch\r\nConnection: close\r\n\r\n")
        status, headers, body = read_response(client)
    assert status == 503 and headers["content-type"] == "application/json", (status, headers, body)
    assert orjson.loads(body)["error"] == {
        "type": "service_unavailable",
        "message": "the API is not answering; try again shortly",
        "details": {},
    }


def test_every_nginx_refusal_speaks_the_apis_vocabulary() -> None:
    """Each error page's status and type are a pair of batchsvc.errors.ErrorType."""
    pages = re.findall(r"return (\d{3}) '(.*?)\\n';", TEMPLATE.read_text())
    assert len(pages) >= 6
    for status, body in pages:
        error = orjson.loads(body)["error"]
        assert ErrorType(error["type"]).status == int(status) and error["message"]
        assert set(error) == {"type", "message", "details"}


def test_oversized_headers_are_refused_as_json(proxy: int, backend: Backend) -> None:
    with socket.create_connection(("127.0.0.1", proxy)) as client:
        client.sendall(b"GET /v1/batch HTTP/1.1\r\nHost: batch\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        status, headers, body = read_response(client)
    assert status == 431 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["type"] == "headers_too_large"
    assert backend.accepted == 0


@pytest.mark.parametrize("hops", [0, 1])
def test_the_api_sees_the_client_through_one_trusted_hop(make_app: Any, hops: int) -> None:
    """nginx appends the address it saw to X-Forwarded-For. With forwarded_hops=1 the API
    takes that last entry, and nothing a client put before it; with 0 it takes none."""
    app = make_app(role=None, forwarded_hops=hops)
    admin = {"Authorization": f"Bearer {grant(app, role=Role.ADMIN)}"}
    viewer = {"Authorization": f"Bearer {grant(app, tenant='acme', role=Role.VIEWER)}"}
    client: FlaskClient = app.test_client()
    client.patch("/v1/tenants/acme", json={"ip_allowlist": ["203.0.113.0/24"]}, headers=admin)
    proxy = {"REMOTE_ADDR": "10.0.0.2"}

    def status(forwarded: str) -> int:
        headers = {**viewer, "X-Forwarded-For": forwarded}
        return client.get("/v1/batch", headers=headers, environ_base=proxy).status_code

    allowed = 200 if hops == 1 else 403
    assert status("203.0.113.5") == allowed
    assert status("203.0.113.5, 198.51.100.7") == 403  # forged first entry, real client last
