"""/readyz asks for a live LLM worker of each model in BATCHSVC_WORKER_MODELS, and
answers 503 naming it once that worker is gone. (Named to run last: it stops the
session's LLM worker.)"""

from __future__ import annotations

import requests

from tests.observability.conftest import Watched
from tests.support.stack import wait_until


def test_readyz_fails_naming_the_model_whose_worker_died(watched: Watched) -> None:
    ready = requests.get(f"{watched.api}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"redis": True, "storage": True, "workers": True}}

    watched.stack.llm.stop()

    def unready() -> dict | None:
        response = requests.get(f"{watched.api}/readyz", timeout=10)
        return response.json() if response.status_code == 503 else None

    # The broadcast's answer is cached for readiness_cache_s (5 s, the default) per gunicorn
    # worker; a worker that stops removes its record (tasks/fleet.py).
    body = wait_until(unready, 30, interval=0.5, what="/readyz to notice the LLM worker is gone")
    assert body["checks"] == {"redis": True, "storage": True, "workers": False}
    assert body["failed"] == {"workers": "no live LLM worker for tiny-random"}
    assert requests.get(f"{watched.api}/healthz", timeout=10).status_code == 200  # liveness is not readiness
