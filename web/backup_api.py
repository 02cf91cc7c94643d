"""Backup and restore of the job state (admin keys only); `batchsvc admin backup`
and `batchsvc admin restore` are their command line, and beat runs the backup
daily (`batch.backup`). See batchsvc/pipeline/backup.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import current_app

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.pipeline.backup import backup, restore
from batchsvc.storage.base import ObjectNotFound
from batchsvc.store.keys import Role
from web.admin_schemas import OPTIONAL_JSON, BackupSchema, Blueprint, RestoreResultSchema, RestoreSchema
from web.audit import audited
from web.auth import requires

bp = Blueprint("backup", __name__, url_prefix="/v1/admin", description="Backup and restore of the job state")


@bp.post("/backup")
@audited("backup")
@requires(Role.ADMIN)
@bp.response(201, BackupSchema)
def make_backup() -> dict[str, Any]:
    """A snapshot of the job state (Redis records) into storage, under backups/state/."""
    return dataclasses.asdict(backup(current_app.extensions["batchsvc"]))


@bp.post("/restore")
@audited("restore")
@requires(Role.ADMIN)
@bp.arguments(RestoreSchema, location=OPTIONAL_JSON, required=False)
@bp.response(200, RestoreResultSchema)
@bp.error(404, "no such backup (or none at all) in storage")
def restore_backup(args: dict[str, Any]) -> dict[str, Any]:
    """Write back every record of a backup (the latest unless `backup`) that Redis
    lacks; records present are left alone, so it is safe to run twice."""
    key = args["backup"]
    try:
        done = restore(current_app.extensions["batchsvc"], key)
    except (FileNotFoundError, ObjectNotFound):
        raise ServiceError(ErrorType.NOT_FOUND, "no such backup in storage", {"backup": key}) from None
    return dataclasses.asdict(done)
