"""Backup, flush, restore (batchsvc/pipeline/backup.py): every job comes back with
its status and counts, and the files, keys and tenants with it. On the test's
own redis-server, flushed between the two; the operator's commands through the
installed `batchsvc` CLI against the API over HTTP."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from batchsvc.pipeline.finalize import finalize_job
from batchsvc.pipeline.prepare import prepare_job
from batchsvc.pipeline.shards import run_shard
from batchsvc.store.jobs import JobStatus
from batchsvc.store.keys import Role
from tests.support.client import grant, keyed_client
from tests.support.invariants import instant_requests, submit
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack
from tests.support.webhook_receiver import WebhookReceiver
from web import create_app

pytestmark = pytest.mark.integration

BATCHSVC = Path(sys.executable).parent / "batchsvc"
BOOTSTRAP = "bsk_backup-test-bootstrap-admin-key-0123456789"


def cli(url: str, key: str, *args: str) -> str:
    env = {**os.environ, "BATCHSVC_URL": url, "BATCHSVC_API_KEY": key}
    done = subprocess.run([str(BATCHSVC), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_backup_flush_restore_brings_every_job_back(
    make_stack: Callable[..., Stack], redis_server: RedisServer, receiver: WebhookReceiver
) -> None:
    stack = make_stack(start=False, bootstrap_api_key=BOOTSTRAP)
    svc = stack.services
    size = svc.settings.shard_size
    # A completed job, one half-way (in_progress, one shard of three done), one queued.
    done_id = submit(stack, instant_requests(2 * size), receiver.url)
    running_id = submit(stack, instant_requests(3 * size), receiver.url)
    queued_id = submit(stack, instant_requests(size), receiver.url)
    for job_id in (done_id, running_id):
        manifest = prepare_job(svc, job_id)
        assert manifest is not None
        assert svc.jobs.transition(job_id, JobStatus.IN_PROGRESS, expect={JobStatus.VALIDATING})
    for index in range(2):
        run_shard(svc, done_id, index)
    assert finalize_job(svc, done_id).status is JobStatus.COMPLETED
    run_shard(svc, running_id, 0)
    # A file, another tenant's key and its policy.
    jsonl = b"".join(orjson.dumps(r) + b"\n" for r in instant_requests(2))
    uploaded = stack.client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(jsonl), "in.jsonl")})
    assert uploaded.status_code == 200, uploaded.get_json()
    acme_key = grant(stack.app, "acme", Role.VIEWER)
    svc.tenants.update("acme", max_active_jobs=7)

    jobs = (done_id, running_id, queued_id)
    before = {job_id: stack.client.get(f"/v1/batch/{job_id}").get_json() for job_id in jobs}
    assert [before[j]["status"] for j in jobs] == ["completed", "in_progress", "queued"]
    file_before = stack.client.get(f"/v1/files/{uploaded.get_json()['id']}").get_json()

    assert stack.client.post("/v1/admin/backup").status_code == 403  # a submitter may not
    url = stack.serve_http()
    made = cli(url, BOOTSTRAP, "admin", "backup")
    key = made.splitlines()[0]
    assert key.startswith("backups/state/") and "3 jobs" in made
    snapshot = orjson.loads(gzip.decompress(svc.storage.get_bytes(key)))
    assert not [r for r in snapshot["records"] if r["key"].startswith(("lease", "supervisor"))]

    # Redis loses everything (a restart without persistence, a new instance).
    state = redis.Redis.from_url(redis_server.url(2))
    state.flushall()
    assert state.dbsize() == 0
    assert stack.client.get(f"/v1/batch/{done_id}").status_code == 401  # even the keys are gone

    # A web process starts again (it installs the bootstrap admin key), and the operator restores.
    app = create_app(dataclasses.replace(stack.settings))
    restored = cli(url, BOOTSTRAP, "admin", "restore")
    # Everything but what the new web process wrote itself (the bootstrap key's records).
    found = re.search(r"(\d+) records restored \(3 jobs\), (\d+) present", restored)
    assert found and restored.startswith(key), restored
    assert int(found[1]) + int(found[2]) == len(snapshot["records"]) and int(found[2]) <= 3

    after = {job_id: stack.client.get(f"/v1/batch/{job_id}").get_json() for job_id in jobs}  # the old key works
    for job_id in jobs:
        # Status, counts, times: all as they were (throughput and estimates are computed from the clock).
        clock = {"throughput": None, "estimated_completion": None}
        assert {**after[job_id], **clock} == {**before[job_id], **clock}, job_id
    assert stack.client.get(f"/v1/files/{file_before['id']}").get_json() == file_before
    assert keyed_client(app, acme_key).get("/v1/batch").status_code == 200
    assert svc.tenants.get("acme").max_active_jobs == 7
    results = stack.client.get(f"/v1/batch/{done_id}/results")
    assert results.status_code == 200 and results.get_json()["stats"]["total"] == 2 * size

    # Safe to run twice: nothing is overwritten.
    again = cli(url, BOOTSTRAP, "admin", "restore", "--backup", key)
    assert f"0 records restored (0 jobs), {len(snapshot['records'])} present" in again
