"""A private redis-server on a free loopback port, for tests that stop or restart
Redis, or that must not leave broker state behind in the machine's shared Redis.

    with RedisServer.start(tmp_path / "redis") as server:
        settings(broker_url=server.url(0), result_backend=server.url(1), ...)
        server.restart()  # SHUTDOWN (the AOF is flushed), then start on the same port and dir

It runs with `--appendonly yes`, as production should (configs/redis-production.conf),
so a restart keeps what was written before it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.moto_server import free_port
from tests.support.stack import _die_with_parent


class RedisServer:
    def __init__(self, directory: Path, port: int):
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, timeout: float = 20.0) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the free port may be taken between the check and the bind
            server = cls(directory, free_port())
            server._spawn()
            try:
                server._wait_until_ready(timeout)
            except RuntimeError:
                server.stop()
                continue
            return server
        raise RuntimeError(f"redis-server did not start; log:\n{server.log_tail()}")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _spawn(self) -> None:
        command = [
            "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--logfile", "redis.log", "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )

    def ping(self) -> bool:
        """True once the server answers PING (not while it still loads its AOF)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """SHUTDOWN, as an operator's restart would: the AOF is flushed first."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True, timeout=30)
        assert self.process is not None
        self.process.wait(timeout=30)

    def start_again(self, timeout: float = 30.0) -> None:
        """Start on the same port and directory, so it loads the same AOF."""
        self._spawn()
        self._wait_until_ready(timeout)

    def restart(self) -> None:
        self.shutdown()
        self.start_again()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
