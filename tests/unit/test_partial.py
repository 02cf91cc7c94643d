"""Partial results of a running job: whole lines, none twice, and none lost when
a shard finishes while it is being read."""

from __future__ import annotations

from pathlib import Path

import orjson

from batchsvc.inference import outputs
from batchsvc.pipeline.partial import finished_lines
from batchsvc.storage import layout
from batchsvc.storage.local import LocalStorage
from batchsvc.storage.manifest import Manifest, ShardInfo, ShardSummary

JOB = "batch_" + "ab" * 16


def line(custom_id: str) -> bytes:
    return orjson.dumps(outputs.success_line(JOB, custom_id, {"object": "chat.completion", "usage": {}}))


def finish_shard(storage: LocalStorage, ids: list[str]) -> None:
    """What a shard does at its end: output and summary, then its parts go."""
    key = layout.shard_output_key(layout.JobKey("default", JOB), 0, "run1")
    storage.put_bytes(key, b"".join(line(c) + b"\n" for c in ids))
    summary = ShardSummary(JOB, 0, key, len(ids), len(ids), 0, 0, 0, 0.0, 0, "x")
    assert summary.save_if_absent(storage)
    storage.delete_prefix(layout.shard_parts_prefix(layout.JobKey("default", JOB), 0))


def test_a_shard_finishing_mid_read_is_read_on_from_its_output(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "http://x", b"k" * 32)
    Manifest(JOB, "m", 4, [ShardInfo(0, 4, 1)]).save(storage)
    storage.put_bytes(layout.shard_part_key(layout.JobKey("default", JOB), 0, 0, "run1"), line("a") + b"\n")
    storage.put_bytes(
        layout.shard_part_key(layout.JobKey("default", JOB), 0, 1, "run1"), line("b") + b"\n" + line("c") + b"\n"
    )

    reader = finished_lines(storage, layout.JobKey("default", JOB), successes=True)
    first = next(reader)  # part 0 read ...
    finish_shard(storage, ["a", "b", "c", "d"])  # ... then the shard ends and removes its parts
    rest = list(reader)

    ids = [orjson.loads(raw)["custom_id"] for raw in [first, *rest]]
    assert ids == ["a", "b", "c", "d"]
    assert all(raw.endswith(b"\n") for raw in [first, *rest])


def test_a_job_not_yet_sharded_has_nothing_finished(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "http://x", b"k" * 32)
    assert list(finished_lines(storage, layout.JobKey("default", JOB), successes=True)) == []
