"""The results finished so far of a running job.

Each shard's finished lines are in storage: in its output object once the shard
is done, in checkpoint parts before that. Both are written whole (atomic puts),
so a reader sees complete JSON lines only, never a torn one. A shard that
finishes while it is read is read on from its output, so the snapshot holds at
least what the progress counters said before it was taken, and nothing twice."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from batchsvc.inference import outputs
from batchsvc.pipeline.shards import iter_lines
from batchsvc.storage import layout
from batchsvc.storage.base import ObjectNotFound, Storage
from batchsvc.storage.layout import JobRef
from batchsvc.storage.manifest import Manifest, ShardSummary


def shard_lines(storage: Storage, job: JobRef, index: int) -> Iterator[bytes]:
    """The lines one shard has finished: its output once it is done, its checkpoint parts before."""
    try:
        summary = ShardSummary.load(storage, job, index)
    except ObjectNotFound:
        summary = None
    if summary is not None:
        yield from iter_lines(storage, summary.output_key)
        return
    seen: set[str] = set()
    try:
        for part in storage.list(layout.shard_parts_prefix(job, index)):
            for raw in iter_lines(storage, part.key):
                seen.add(orjson.loads(raw)["custom_id"])
                yield raw
    except ObjectNotFound:
        pass  # a part went: the shard finished while we read it
    # If the shard finished meanwhile (its parts gone, or not all listed), the
    # rest of what it answered is in its output now.
    try:
        summary = ShardSummary.load(storage, job, index)
    except ObjectNotFound:
        return
    for raw in iter_lines(storage, summary.output_key):
        if orjson.loads(raw)["custom_id"] not in seen:
            yield raw


def finished_lines(storage: Storage, job: JobRef, *, successes: bool) -> Iterator[bytes]:
    """Finished output lines (successes, or else errors), each ending in a newline."""
    try:
        manifest = Manifest.load(storage, job)
    except ObjectNotFound:  # not yet sharded: nothing has run
        return
    for shard in manifest.shards:
        for raw in shard_lines(storage, job, shard.index):
            if outputs.is_success(orjson.loads(raw)) == successes:
                yield raw + b"\n"
