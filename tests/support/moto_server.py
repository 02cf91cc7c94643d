"""Run moto's S3 server on a free loopback port, as a stand-in for MinIO in tests.

    with MotoServer.start() as s3:
        S3Storage(s3.endpoint, "test", "test", "bucket", secure=False)

Moto accepts any credentials and keeps everything in memory.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Self


def free_port() -> int:
    """A port nothing listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: IO[bytes]):
        self.process = process
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.url = f"http://{self.endpoint}"
        self._log = log

    @classmethod
    def start(cls, timeout: float = 30.0) -> MotoServer:
        port = free_port()
        # The server logs every request; into a pipe nobody reads it would block once
        # the pipe buffer fills, so it goes to a file we only read when start-up fails.
        log = tempfile.TemporaryFile()  # noqa: SIM115 -- owned by the server, closed in stop()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = cls(process, port, log)
        try:
            server._wait_until_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}:\n{self._output()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer on {self.url} within {timeout}s:\n{self._output()}")
            time.sleep(0.05)

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
