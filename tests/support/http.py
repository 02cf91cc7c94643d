"""A small HTTP server on loopback for tests: serves files (input_file_url) and
records POSTs (webhook receivers), each with the status it was answered with.
Its answer to POSTs can be changed mid-test."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int = 200  # the status the server answered with
    at: float = 0.0  # time.monotonic() when it arrived

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get("webhook-id")

    @property
    def ok(self) -> bool:
        return 200 <= self.answered < 300


@dataclass
class LoopbackHTTPServer:
    root: Path | None = None  # the files GET serves; None serves none
    received: list[Received] = field(default_factory=list)
    post_status: int = 200
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                root = owner.root
                path = (root / self.path.lstrip("/")).resolve() if root is not None else None
                if root is None or path is None or root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with owner._lock:
                    status = owner.post_status
                    owner.received.append(
                        Received(self.path, dict(self.headers.items()), body, status, time.monotonic())
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def posts(self) -> list[Received]:
        with self._lock:
            return list(self.received)
