"""With BATCHSVC_LOG_FORMAT=json, every line a Celery worker writes is one JSON
object; lines about a job name it, its shard and its tenant; no line carries a
prompt or a key."""

from __future__ import annotations

import orjson

from tests.observability.conftest import ADMIN_KEY, FinishedJob, Watched


def log_entries(text: str) -> list[dict]:
    entries = []
    for raw in text.splitlines():
        if raw.strip():
            entries.append(orjson.loads(raw))  # fails the test on any line that is not JSON
    return entries


def test_worker_logs_are_json_lines_that_name_the_job(watched: Watched, finished_job: FinishedJob) -> None:
    job_id = finished_job.id
    about_job = []
    for worker in (watched.stack.cpu, watched.stack.llm):
        text = worker.log_text()
        entries = log_entries(text)
        assert entries, f"{worker.name} wrote nothing"
        assert {"ts", "level", "logger", "component", "message"} <= set(entries[0])
        about_job += [e for e in entries if job_id in e["message"] or e.get("job_id") == job_id]
        # Never a prompt, an answer's input or a key.
        for request in finished_job.requests:
            profile = request["body"]["messages"][1]["content"]
            assert profile.split("\n")[2] not in text  # the candidate's "Name: ..." line
        assert ADMIN_KEY not in text
    assert about_job, "no line about the job"
    for entry in about_job:
        assert entry.get("job_id") == job_id, entry
        assert entry.get("tenant") == "default", entry
    shards = {e["shard"] for e in about_job if "shard" in e}
    assert shards == {0, 1}, about_job
