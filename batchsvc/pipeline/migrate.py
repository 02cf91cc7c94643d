"""One-off migration of data written before tenants existed.

Before, a job's objects lived under `jobs/{id}/`, uploads under `files/{id}`,
and records had no tenant. This moves them to `tenants/{tenant}/...`, rewrites
the keys the records and shard summaries hold, and adds the records to their
tenant's indexes, so retention, listings and quotas see them again.

Run it with the workers stopped (`scripts/migrate_to_tenants.py`). It is safe
to run again: a record is marked migrated (its `tenant` field) only after its
objects have moved, and a run that stopped half-way picks up what is left."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from batchsvc.access import DEFAULT_TENANT
from batchsvc.pipeline.recovery import save_job_record
from batchsvc.services import Services
from batchsvc.storage import layout
from batchsvc.storage.base import Storage
from batchsvc.store.files import FileRecord
from batchsvc.store.jobs import Job

log = logging.getLogger(__name__)


@dataclass
class Migrated:
    jobs: int = 0
    files: int = 0
    objects: int = 0


def _moved(key: str | None, old: str, new: str) -> str | None:
    return new + key[len(old) :] if key is not None and key.startswith(old) else key


def _move(storage: Storage, key: str, target: str, old: str, new: str) -> None:
    """Copy one object, then delete it. A shard summary names its output object
    under `old`: that name moves to `new` too."""
    if key.endswith("/summary.json"):
        summary = orjson.loads(storage.get_bytes(key))
        summary["output_key"] = _moved(summary["output_key"], old, new)
        storage.put_bytes(target, orjson.dumps(summary), "application/json")
    else:
        with storage.open(key) as stream:
            storage.put_stream(target, stream, "application/octet-stream")
    storage.delete(key)


def _move_prefix(storage: Storage, old: str, new: str) -> int:
    infos = list(storage.list(old))
    for info in infos:
        _move(storage, info.key, new + info.key[len(old) :], old, new)
    return len(infos)


def _without_tenant(state: Any, prefix: str, kind: str) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """The records of a kind ("job", "file") that have no tenant yet: ids and fields."""
    for raw_id in state.zrange(f"{prefix}:{kind}s", 0, -1):
        fields = state.hgetall(f"{prefix}:{kind}:{raw_id.decode()}")
        if fields and b"tenant" not in fields:
            yield raw_id.decode(), fields


def migrate_to_tenant_layout(svc: Services, tenant: str = DEFAULT_TENANT) -> Migrated:
    """Give every record without a tenant to `tenant`, moving its objects."""
    done = Migrated()
    state: Any = svc.jobs.redis
    prefix = svc.settings.redis_prefix
    for job_id, fields in _without_tenant(state, prefix, "job"):
        job = Job.from_fields(fields)
        old, new = f"jobs/{job_id}/", layout.job_prefix(layout.JobKey(tenant, job_id))
        done.objects += _move_prefix(svc.storage, old, new)
        keys = {name: _moved(getattr(job, name), old, new) for name in ("input_key", "results_key", "errors_key")}
        pipe = state.pipeline()
        pipe.zadd(f"{prefix}:t:{tenant}:jobs", {job_id: job.created_at})
        if not job.status.terminal:
            pipe.sadd(f"{prefix}:t:{tenant}:active", job_id)
        pipe.execute()
        svc.jobs.update(job_id, **keys)
        svc.jobs.update(job_id, tenant=tenant)  # last: the mark that this job is done
        save_job_record(svc, job_id)
        done.jobs += 1
    for file_id, fields in _without_tenant(state, prefix, "file"):
        record = FileRecord.from_fields(fields)
        if record.key == f"files/{file_id}":
            new_key = layout.file_key(tenant, file_id)
            if svc.storage.exists(record.key):
                _move(svc.storage, record.key, new_key, record.key, new_key)
                done.objects += 1
            record.key = new_key
        else:  # a job's output or error file: its job moved it
            old, new = f"jobs/{record.job_id}/", f"tenants/{tenant}/jobs/{record.job_id}/"
            record.key = _moved(record.key, old, new) or record.key
        record.tenant = tenant
        svc.files.save(record)  # writes the tenant field and the tenant's index
        done.files += 1
    log.info("migrated %d job(s), %d file(s), %d object(s) to tenant %r", done.jobs, done.files, done.objects, tenant)
    return done
