"""configs/minio-lifecycle.json, the bucket rule behind batchsvc's own retention: it must
cover every key the storage layout writes, and expire later than retention does."""

from __future__ import annotations

import inspect
import json

from batchsvc.settings import PROJECT_ROOT, load_settings
from batchsvc.storage import layout


def test_the_lifecycle_rule_covers_every_key_of_the_layout_after_retention() -> None:
    rules = json.loads((PROJECT_ROOT / "configs/minio-lifecycle.json").read_text())["Rules"]
    prefixes = [r["Filter"]["Prefix"] for r in rules if r["Status"] == "Enabled"]
    job = layout.JobKey(tenant="acme", job_id="batch_1")
    keys = [layout.file_key("acme", "file-1"), layout.shard_part_key(job, 0, 0, "run")]
    for name, function in inspect.getmembers(layout, inspect.isfunction):
        parameters = list(inspect.signature(function).parameters)
        if name.endswith("_key") and parameters == ["job"]:
            keys.append(function(job))
        elif parameters == ["job", "index"]:
            keys.append(function(job, 3))
    assert len(keys) > 8
    for key in keys:
        assert any(key.startswith(prefix) for prefix in prefixes), f"{key} outlives every lifecycle rule"
    retention_days = load_settings(environ={}).retention_s / 86400
    assert all(r["Expiration"]["Days"] > retention_days for r in rules)
