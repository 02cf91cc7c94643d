"""The audit log: one structured line per call that changes state or reads job
data. It names who, what, which job and how it ended, and never carries a key,
a secret or candidate data (no bodies, no prompts, no URLs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from flask import Flask, Response, g, request

log = logging.getLogger("batchsvc.audit")


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "denied" if status in (401, 403) else "error"


def write(action: str, status: int, **ids: str | None) -> None:
    """One audit line for `action` ending in HTTP `status`, naming the caller and the objects."""
    record = {
        "audit": action,
        "tenant": getattr(g, "tenant", None),
        "key_id": getattr(g, "key_id", None),
        **ids,
        "target_key_id": getattr(g, "audit_target_key_id", None),
        "client_ip": request.remote_addr,
        "status": status,
        "outcome": _outcome(status),
    }
    log.info(orjson.dumps({k: v for k, v in record.items() if v is not None}).decode())


def audited(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Log `action` for the decorated view, with the job id from its URL. The line
    is written once the response is made (install), so its status is the one the
    client got, whichever handler made it."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.audit_action = action
            return view(*args, **kwargs)

        return wrapper

    return decorate


def install(app: Flask) -> None:
    @app.after_request
    def _audit_line(response: Response) -> Response:
        action = g.pop("audit_action", None)
        if action is not None:
            args = request.view_args or {}
            write(
                action,
                response.status_code,
                job_id=args.get("job_id") or args.get("batch_id") or getattr(g, "audit_job_id", None),
                file_id=args.get("file_id") or getattr(g, "audit_file_id", None),
                target_tenant=args.get("tenant"),
            )
        return response
