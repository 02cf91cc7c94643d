"""Webhook delivery: one POST per terminal job state, retried with backoff.

Every attempt of a delivery carries the same `webhook-id`, so a receiver can
drop duplicates (headers follow the Standard Webhooks names)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import requests

from batchsvc import __version__


class WebhookError(Exception):
    """This attempt failed; the caller decides whether to try again."""


def delivery_id(job_id: str, status: str) -> str:
    return "msg_" + hashlib.blake2b(f"{job_id}:{status}".encode(), digest_size=12).hexdigest()


def payload(job_id: str, status: str, stats: dict[str, Any] | None, results_url: str | None) -> bytes:
    return orjson.dumps({"job_id": job_id, "status": status, "stats": stats, "results_url": results_url})


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base, 2*base, 4*base ... capped."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def deliver(url: str, body: bytes, msg_id: str, *, timeout: float) -> int:
    """POST once; returns the status code on 2xx, raises WebhookError otherwise."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"batchsvc/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(time.time())),
    }
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise WebhookError(f"{type(exc).__name__} posting to the webhook") from None
    if not 200 <= response.status_code < 300:
        raise WebhookError(f"webhook answered HTTP {response.status_code}")
    return response.status_code
