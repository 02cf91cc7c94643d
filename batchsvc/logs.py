"""Logging of every process: text for people (the default), or one JSON object a
line (`BATCHSVC_LOG_FORMAT=json`) for a log collector.

Lines written while a job is being handled (a task of the job, an API call
naming it) carry `job_id`, `shard` and `tenant`, set once with `job_context`.
What goes into a line is the code's message: prompts, answers, keys and
secrets are never logged, and nothing here adds them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

CONTEXT_FIELDS = ("job_id", "shard", "tenant")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("batchsvc_log_context", default=None)


def set_job_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Name the job (and shard, tenant) the lines that follow are about."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if k in CONTEXT_FIELDS and v is not None}}
    return _context.set(merged)


def reset_job_context(token: contextvars.Token[dict[str, Any] | None] | None = None) -> None:
    if token is None:
        _context.set(None)
    else:
        _context.reset(token)


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    token = set_job_context(**fields)
    try:
        yield
    finally:
        reset_job_context(token)


class ContextFilter(logging.Filter):
    """Copy the job context onto each record (as attributes both formats read)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JSONFormatter(logging.Formatter):
    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(job)s")

    def format(self, record: logging.LogRecord) -> str:
        named = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None) is not None]
        record.job = f" [{' '.join(named)}]" if named else ""
        return super().format(record)


_stream: Any = None  # where log lines go once capture_stdio took over fds 1 and 2


def capture_stdio(component: str) -> None:
    """Turn whatever else reaches this process's stdout and stderr (a library's print,
    tqdm bars, torch's C++ warnings, children that inherit the descriptors) into JSON
    lines too: fds 1 and 2 become a pipe that a thread reads and wraps. Log lines
    go to the original stderr."""
    global _stream
    if _stream is not None:
        return
    _stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    for fd in (1, 2):
        os.dup2(write_fd, fd)
    os.close(write_fd)
    formatter = JSONFormatter(component)

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                text = line.rstrip("\r\n")
                if text.strip():
                    record = logging.LogRecord("stdio", logging.INFO, "", 0, text, None, None)
                    _stream.write(formatter.format(record) + "\n")

    threading.Thread(target=pump, name="stdio-to-json", daemon=True).start()


def configure_logging(log_format: str, level: str, component: str) -> None:
    """One handler on the root logger, on stderr; library loggers propagate to it.
    Like logging.basicConfig, it leaves a root logger that someone else set up
    (pytest's capture, an embedding application) alone."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be text or json, not {log_format!r}")
    root = logging.getLogger()
    if any(not getattr(h, "_batchsvc", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(_stream or sys.stderr)
    handler.setFormatter(JSONFormatter(component) if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._batchsvc = True  # type: ignore[attr-defined]
    if log_format == "json":
        logging.captureWarnings(True)  # warnings too become lines of the log, not bare stderr text
        # vLLM would otherwise put its own handler and format on its loggers.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
