"""The model catalogue and the LLM workers: `GET /v1/models` (OpenAI's shape,
any key) and the admin view and hot-swap of workers (`batchsvc workers ...`)."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.services import Services
from batchsvc.store.keys import Role
from batchsvc.store.workers import live_models
from tasks.names import SWAP_MODEL
from web.audit import audited
from web.auth import requires

bp = Blueprint("fleet", __name__, url_prefix="/v1")


def services() -> Services:
    return current_app.extensions["batchsvc"]


@bp.get("/models")
def list_models() -> Response:
    """Every alias a job may name. `live_workers` (not in OpenAI's object) names
    the workers whose engine serves the model now; empty means its jobs wait."""
    svc = services()
    serving = live_models(svc.workers.live())
    created = int(svc.settings.path(svc.settings.models_file).stat().st_mtime)
    data = [
        {
            "id": alias,
            "object": "model",
            "created": created,
            "owned_by": "batchsvc",
            "live_workers": serving.get(alias, []),
        }
        for alias in svc.models.aliases()
    ]
    return jsonify({"object": "list", "data": data})


@bp.get("/admin/workers")
@requires(Role.ADMIN)
def list_workers() -> Response:
    return jsonify({"object": "list", "data": [w.public() for w in services().workers.live()]})


@bp.post("/admin/workers/<name>/model")
@audited("worker_swap")
@requires(Role.ADMIN)
def swap_worker_model(name: str) -> tuple[Response, int]:
    """Move a live LLM worker to another model without restarting it: it finishes
    its current shard, unloads its engine, loads `model` and consumes that model's
    queue. Answers at once (202); the worker's record shows the swap's progress."""
    body = request.get_json(silent=True)
    model = body.get("model") if isinstance(body, dict) else None
    svc = services()
    if not isinstance(model, str) or model not in svc.models:
        raise ServiceError(
            ErrorType.VALIDATION,
            f"model must be one of the catalogue's aliases, not {model!r}",
            {"fields": {"model": [f"one of: {', '.join(svc.models.aliases())}"]}},
        )
    if svc.workers.get(name) is None:
        raise ServiceError(ErrorType.NOT_FOUND, f"no live LLM worker named {name!r}", {"worker": name})
    requested_at = time.time()
    svc.workers.request_swap(name, model, requested_at)
    current_app.extensions["celery"].control.broadcast(
        SWAP_MODEL, arguments={"model": model, "requested_at": requested_at}, destination=[name], reply=False
    )
    record = svc.workers.get(name)
    return jsonify(record.public() if record else {"name": name}), 202
