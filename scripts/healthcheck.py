"""The container images' HEALTHCHECK: does the process this container runs do its job?

The entrypoint (scripts/procfile_exec.sh) execs one Procfile entry, so PID 1 is
that process, and its command line says what to ask:

- gunicorn (web): GET /healthz on the address it binds answers 200;
- a Celery worker with a pool (cpu): its node answers a ping over the broker. A
  `--pool solo` worker (the LLM workers) answers control messages only between
  tasks, so for it, as for the rest, alive is healthy;
- Flower: its port takes a connection;
- anything else (beat, the launcher of several GPU workers): alive is healthy,
  and Docker already sees a PID 1 that died.

A script's command line starts with its interpreter (`python .venv/bin/gunicorn ...`),
which is skipped.

Exit 0 when healthy, 1 when not (Docker's convention).

    python scripts/healthcheck.py [PID]   PID: the process to ask about (default 1)
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 8.0


def option(argv: Sequence[str], *names: str) -> str | None:
    """The value of `--name value`, `--name=value` or `-n value` in a command line."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def web_ok(argv: Sequence[str]) -> bool:
    host, _, port = (option(argv, "--bind", "-b") or "127.0.0.1:8000").rpartition(":")
    with urllib.request.urlopen(f"http://{loopback(host)}:{port}/healthz", timeout=TIMEOUT_S) as response:
        return response.status == 200


def worker_ok(argv: Sequence[str]) -> bool:
    from tasks.celery_app import app  # only workers pay for importing Celery

    node = (option(argv, "-n", "--hostname") or "celery@%h").replace("%h", socket.gethostname())
    return bool(app.control.ping(destination=[node], timeout=TIMEOUT_S))


def flower_ok(argv: Sequence[str]) -> bool:
    host = loopback(option(argv, "--address") or "127.0.0.1")
    with socket.create_connection((host, int(option(argv, "--port") or 5555)), timeout=TIMEOUT_S):
        return True


def healthy(argv: Sequence[str]) -> bool:
    names = [Path(arg).name for arg in argv]
    program = next((name for name in names if not name.startswith("python")), "")
    if program == "gunicorn":
        return web_ok(argv)
    if program == "celery" and "worker" in argv and option(argv, "--pool", "-P") != "solo":
        return worker_ok(argv)
    if program == "celery" and "flower" in argv:
        return flower_ok(argv)
    return True


def main() -> int:
    pid = sys.argv[1] if len(sys.argv) > 1 else "1"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    try:
        return 0 if healthy(argv) else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
