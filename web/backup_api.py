"""Backup and restore of the job state (admin keys only); `batchsvc admin backup`
and `batchsvc admin restore` are their command line, and beat runs the backup
daily (`batch.backup`). See batchsvc/pipeline/backup.py."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, current_app, jsonify, request

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.pipeline.backup import backup, restore
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound
from batchsvc.store.keys import Role
from web.audit import audited
from web.auth import requires

bp = Blueprint("backup", __name__, url_prefix="/v1/admin")


@bp.post("/backup")
@audited("backup")
@requires(Role.ADMIN)
def make_backup() -> tuple[Response, int]:
    return jsonify(dataclasses.asdict(backup(current_app.extensions["batchsvc"]))), 201


@bp.post("/restore")
@audited("restore")
@requires(Role.ADMIN)
def restore_backup() -> Response:
    body = request.get_json(silent=True) or {}
    key = body.get("backup") if isinstance(body, dict) else None
    if key is not None and (not isinstance(key, str) or not key.startswith(layout.BACKUPS_PREFIX)):
        raise ServiceError(
            ErrorType.VALIDATION,
            f"backup must be a key under {layout.BACKUPS_PREFIX} (as `admin backup` printed it)",
            {"fields": {"backup": ["not a backup key"]}},
        )
    try:
        done = restore(current_app.extensions["batchsvc"], key)
    except (FileNotFoundError, ObjectNotFound):
        raise ServiceError(ErrorType.NOT_FOUND, "no such backup in storage", {"backup": key}) from None
    return jsonify(dataclasses.asdict(done))
