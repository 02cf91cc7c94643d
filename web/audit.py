"""The audit log: one structured line per call that changes state or reads job
data. It names who, what, which job and how it ended, and never carries a key,
a secret or candidate data (no bodies, no prompts, no URLs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from flask import g, request
from werkzeug.exceptions import HTTPException

from batchsvc.errors import ServiceError

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
    """Log `action` for the decorated view, with the job id from its URL."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            status = 500
            try:
                response = view(*args, **kwargs)
                status = response[1] if isinstance(response, tuple) else getattr(response, "status_code", 200)
                return response
            except ServiceError as exc:
                status = exc.type.status
                raise
            except HTTPException as exc:
                status = exc.code or 500
                raise
            finally:
                write(
                    action,
                    status,
                    job_id=kwargs.get("job_id") or kwargs.get("batch_id") or getattr(g, "audit_job_id", None),
                    file_id=kwargs.get("file_id") or getattr(g, "audit_file_id", None),
                    target_tenant=kwargs.get("tenant"),
                )

        return wrapper

    return decorate
