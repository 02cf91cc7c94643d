"""Per-request metrics and log context for the Flask app."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from batchsvc import logs, metrics


def _start() -> None:
    g.started = time.perf_counter()
    # Runs after auth.identify, so the caller's tenant is known (when the key is).
    logs.set_job_context(job_id=(request.view_args or {}).get("job_id"), tenant=g.get("tenant"))


def _count(response: Response) -> Response:
    # The route's rule, never the raw path: ids in paths would make a series per job.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    if "started" in g:
        metrics.HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - g.started)
    return response


def _forget(_: BaseException | None) -> None:
    logs.reset_job_context()


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_count)
    app.teardown_request(_forget)
