"""A TCP proxy on loopback that a test can cut and restore, to make a service
(the S3 server, a webhook receiver) unreachable for a while.

    proxy = TcpProxy(("127.0.0.1", moto.port)).start()
    settings(s3_endpoint=proxy.endpoint)
    proxy.cut()      # new connections are refused, open ones are reset
    proxy.restore()  # the same address answers again
    proxy.drop_next_answers(1)  # the next request is served, its answer never arrives

The listening socket is bound to an explicit port, so on Linux shutting it down
stops it listening but keeps the port: nobody else can take the address while
the service is "down", and restore() listens on it again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Self

from tests.support.moto_server import free_port

_BACKLOG = 64


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a crashed peer or a dropped route would, and wake any
    thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.accepted = 0  # connections forwarded
        self.reset = 0  # connections cut while open
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = threading.Event()
        self._stopped = False
        self._answers_to_drop = 0

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> TcpProxy:
        for _ in range(20):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                # An explicit port (never 0): only then does the kernel keep it bound across cut().
                listener.bind(("127.0.0.1", free_port()))
            except OSError:
                listener.close()
                continue
            break
        else:
            raise RuntimeError("no free loopback port for the proxy")
        listener.listen(_BACKLOG)
        self._listener = listener
        self._up.set()
        threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        assert self._listener is not None
        with self._lock:
            if not self._up.is_set():
                return
            self._up.clear()
            self._listener.shutdown(socket.SHUT_RDWR)  # stops listening; the port stays ours
            open_now, self._open = self._open, set()
        for sock in open_now:
            _reset(sock)
        self.reset += len(open_now) // 2

    def restore(self) -> None:
        assert self._listener is not None
        with self._lock:
            if self._up.is_set():
                return
            self._listener.listen(_BACKLOG)
            self._up.set()

    def drop_next_answers(self, count: int = 1) -> None:
        """The next `count` answers of the target are never delivered: the client's
        connection is reset as the first byte of an answer comes back, so the
        request was served but the client never hears (a lost answer)."""
        with self._lock:
            self._answers_to_drop = count

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        self._up.set()  # let the accept loop see _stopped
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped:
            self._up.wait()
            if self._stopped:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue  # cut() shut the listener down under us; wait for restore()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if not self._up.is_set():
                    _reset(client)
                    _reset(upstream)
                    continue
                self._open.update((client, upstream))
                self.accepted += 1
            for src, dst, answers in ((client, upstream, False), (upstream, client, True)):
                pump = threading.Thread(target=self._pump, args=(src, dst, answers), name="tcp-proxy-pump", daemon=True)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if answers and self._drop_answer():
                    _reset(dst)
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end the whole connection (HTTP clients never half-close).
        with self._lock:
            self._open.discard(src)
            self._open.discard(dst)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _drop_answer(self) -> bool:
        with self._lock:
            if self._answers_to_drop <= 0:
                return False
            self._answers_to_drop -= 1
            return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
