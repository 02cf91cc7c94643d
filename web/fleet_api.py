"""The model catalogue and the LLM workers: `GET /v1/models` (OpenAI's shape,
any key) and the admin view and hot-swap of workers (`batchsvc workers ...`)."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.services import Services
from batchsvc.store.keys import Role
from batchsvc.store.workers import live_models
from tasks.names import SWAP_MODEL
from web.admin_schemas import OPTIONAL_JSON, Blueprint, ModelListSchema, SwapSchema, WorkerListSchema, WorkerSchema
from web.audit import audited
from web.auth import requires

bp = Blueprint("fleet", __name__, url_prefix="/v1", description="The model catalogue and the LLM workers")

WORKER_PATH = [{"in": "path", "name": "name", "required": True, "description": "the worker's Celery node name"}]


def services() -> Services:
    return current_app.extensions["batchsvc"]


@bp.get("/models")
@bp.response(200, ModelListSchema)
def list_models() -> dict[str, Any]:
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
    return {"object": "list", "data": data}


@bp.get("/admin/workers")
@requires(Role.ADMIN)
@bp.response(200, WorkerListSchema)
def list_workers() -> dict[str, Any]:
    """The live LLM workers: model, state, current shard, engine load times."""
    return {"object": "list", "data": [w.public() for w in services().workers.live()]}


@bp.post("/admin/workers/<name>/model", parameters=WORKER_PATH)
@audited("worker_swap")
@requires(Role.ADMIN)
@bp.arguments(SwapSchema, location=OPTIONAL_JSON)
@bp.response(202, WorkerSchema)
@bp.error(404, "no live LLM worker by this name")
def swap_worker_model(args: dict[str, Any], name: str) -> dict[str, Any]:
    """Move a live LLM worker to another model without restarting it: it finishes
    its current shard, unloads its engine, loads `model` and consumes that model's
    queue. Answers at once (202); the worker's record shows the swap's progress."""
    model = args["model"]
    svc = services()
    if svc.workers.get(name) is None:
        raise ServiceError(ErrorType.NOT_FOUND, f"no live LLM worker named {name!r}", {"worker": name})
    requested_at = time.time()
    svc.workers.request_swap(name, model, requested_at)
    current_app.extensions["celery"].control.broadcast(
        SWAP_MODEL, arguments={"model": model, "requested_at": requested_at}, destination=[name], reply=False
    )
    record = svc.workers.get(name)
    return record.public() if record else {"name": name}
