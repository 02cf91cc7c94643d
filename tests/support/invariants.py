"""What must hold after any fault (issue 4), checked the same way by every fault test:

- every input custom_id is present exactly once across the output and error files;
- every output belongs to its input (the instant engine's answer is recomputed here);
- the job reached a terminal state, and its progress and stats count each request once;
- exactly one webhook delivery id was received, and at least one delivery was answered 2xx.

`collect` gathers what a job produced without judging it, so a test can record the
numbers (lost, duplicated, recomputed) before `assert_invariants` judges them.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from batchsvc.inference.engine import InstantEngine
from tests.support.client import upload
from tests.support.http import Received
from tests.support.stack import Stack, wait_until
from tests.support.webhook_receiver import WebhookReceiver

INSTANT_MODEL = "instant-test"
TERMINAL = ("completed", "failed", "cancelled", "expired")


def instant_requests(
    count: int, *, poison: Iterable[int] = (), hang: Iterable[int] = (), grow: Iterable[int] = ()
) -> list[dict[str, Any]]:
    """`count` chat requests for the instant engine. Lines whose index is in
    `poison` carry the marker that makes the engine kill its worker; in `hang`,
    the one that makes it never answer; in `grow`, the one that makes it take
    memory steadily (BATCHSVC_INSTANT_GROW_MB)."""
    poisoned, hung, grown = set(poison), set(hang), set(grow)
    requests = []
    for i in range(count):
        content = f"Score candidate {i} for the role."
        if i in poisoned:
            content += f" {InstantEngine.CRASH_MARKER}"
        if i in hung:
            content += f" {InstantEngine.HANG_MARKER}"
        if i in grown:
            content += f" {InstantEngine.GROW_MARKER}"
        requests.append(
            {
                "custom_id": f"req-{i:05d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": INSTANT_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8},
            }
        )
    return requests


def instant_answer(request: dict[str, Any], choice: int = 0) -> str:
    """The text the instant engine answers `request` with: a hash of its custom_id
    and body (as the engine reads the body back from the shard's JSONL)."""
    body = orjson.loads(orjson.dumps(request["body"]))
    seed = hashlib.sha256(repr((request["custom_id"], body)).encode()).hexdigest()
    return f"instant:{seed[:16]}:{choice}"


def submit(stack: Stack, requests: list[dict[str, Any]], webhook_url: str) -> str:
    data = b"".join(orjson.dumps(r) + b"\n" for r in requests)
    response = upload(stack.client, data, INSTANT_MODEL, webhook_url=webhook_url)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["job_id"])


def job_view(stack: Stack, job_id: str) -> dict[str, Any]:
    response = stack.client.get(f"/v1/batch/{job_id}")
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


@dataclass
class Watch:
    """The job as the test saw it while waiting: the most requests its progress ever
    claimed done (never more than the total, or something was counted twice)."""

    max_done: int = 0
    statuses: list[str] = field(default_factory=list)

    def see(self, view: dict[str, Any]) -> None:
        progress = view["progress"]
        self.max_done = max(self.max_done, progress["completed"] + progress["failed"])
        if not self.statuses or self.statuses[-1] != view["status"]:
            self.statuses.append(view["status"])


def wait_terminal(
    stack: Stack,
    job_id: str,
    watch: Watch,
    timeout: float = 240,
    while_waiting: Callable[[], None] | None = None,
) -> float:
    """Poll until the job is terminal; returns time.monotonic() when that was seen.
    `while_waiting` runs at every poll (a supervisor restarting a crashed worker)."""

    def terminal() -> bool:
        if while_waiting is not None:
            while_waiting()
        view = job_view(stack, job_id)
        watch.see(view)
        return view["status"] in TERMINAL

    try:
        wait_until(terminal, timeout, interval=0.2, what=f"job {job_id} to end")
    except TimeoutError:
        workers = [stack.cpu, stack.llm, *stack.extra_workers]
        logs = "\n".join(f"--- {w.name} ---\n{w.log_tail(40)}" for w in workers)
        raise TimeoutError(f"job {job_id} did not end: {job_view(stack, job_id)}\n{logs}") from None
    return time.monotonic()


def answered(instant_log: Path) -> Counter[str]:
    """How many times the instant engine answered each custom_id."""
    if not instant_log.exists():
        return Counter()
    return Counter(line for line in instant_log.read_text().splitlines() if line)


def mid_shard(instant_log: Path, shard_size: int) -> bool:
    """With one worker running shards one after another, the engine's answer count
    tells how far into the current shard it is: True half-way through a shard after
    the first (part of it checkpointed, part not)."""
    n = sum(answered(instant_log).values())
    return n >= shard_size and 0.3 <= (n % shard_size) / shard_size <= 0.7


def answers_in(instant_log: Path, ids: list[str]) -> int:
    counts = answered(instant_log)
    return sum(counts[c] for c in ids)


class ResumeClock:
    """Polled while a test waits (`while_waiting`): when the engine first answers
    any of `ids` again after a fault, i.e. when their shard resumed."""

    def __init__(self, instant_log: Path, ids: list[str]):
        self.instant_log = instant_log
        self.ids = ids
        self.before = answers_in(instant_log, ids)
        self.at: float | None = None

    def __call__(self) -> None:
        if self.at is None and answers_in(self.instant_log, self.ids) > self.before:
            self.at = time.monotonic()


def recomputed(instant_log: Path) -> int:
    """Answers the engine gave more than once: work a fault made the service redo."""
    return sum(n - 1 for n in answered(instant_log).values() if n > 1)


def fetch(stack: Stack, url: str) -> bytes:
    """Download a results link: local-storage links are served by the API itself."""
    if url.startswith(stack.settings.public_base_url):
        parts = urlsplit(url)
        response = stack.client.get(parts.path + (f"?{parts.query}" if parts.query else ""))
        assert response.status_code == 200, response.get_data(as_text=True)
        return bytes(response.data)
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def lines_of(data: bytes | str) -> list[dict[str, Any]]:
    """The JSON lines of an output file; a torn line fails right here."""
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def assert_each_request_once(requests: list[dict], results: list[dict], errors: list[dict]) -> None:
    """Every request's custom_id in exactly one of the two files, results in input order."""
    result_ids = [r["custom_id"] for r in results]
    error_ids = [e["custom_id"] for e in errors]
    assert not set(result_ids) & set(error_ids)
    assert sorted(result_ids + error_ids) == sorted(r["custom_id"] for r in requests)
    order = {r["custom_id"]: i for i, r in enumerate(requests)}
    assert result_ids == sorted(result_ids, key=order.__getitem__)  # input order kept


@dataclass
class Outcome:
    job: dict[str, Any]
    results_body: dict[str, Any]
    results: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    lost: list[str]
    duplicated: list[str]
    recomputed: int
    deliveries: list[Received]

    @property
    def error_codes(self) -> Counter[str]:
        return Counter((e.get("error") or {}).get("code") or "response" for e in self.errors)


def collect(
    stack: Stack,
    job_id: str,
    requests: list[dict[str, Any]],
    receiver: WebhookReceiver,
    instant_log: Path,
    webhook_timeout: float = 60,
) -> Outcome:
    """What the job produced: its files, its webhook deliveries, the engine's log."""
    job = job_view(stack, job_id)
    response = stack.client.get(f"/v1/batch/{job_id}/results")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    results = lines_of(fetch(stack, body["results_url"]))
    errors = lines_of(fetch(stack, body["errors_url"])) if body["errors_url"] else []
    seen = Counter(line["custom_id"] for line in results + errors)
    wanted = [r["custom_id"] for r in requests]
    lost = [c for c in wanted if c not in seen]
    duplicated = [c for c, n in seen.items() for _ in range(n - 1)]
    if job["status"] in TERMINAL:
        wait_until(lambda: any(d.ok for d in receiver.deliveries(job_id)), webhook_timeout, what="a 2xx webhook")
    return Outcome(job, body, results, errors, lost, duplicated, recomputed(instant_log), receiver.deliveries(job_id))


def assert_invariants(outcome: Outcome, requests: list[dict[str, Any]], watch: Watch | None = None) -> None:
    job, results, errors = outcome.job, outcome.results, outcome.errors
    total = len(requests)
    by_id = {r["custom_id"]: r for r in requests}

    assert job["status"] == "completed", job
    # Every custom_id exactly once, across both files.
    assert outcome.lost == [], f"{len(outcome.lost)} requests lost, e.g. {outcome.lost[:5]}"
    assert outcome.duplicated == [], f"{len(outcome.duplicated)} duplicates, e.g. {outcome.duplicated[:5]}"
    foreign = [line["custom_id"] for line in results + errors if line["custom_id"] not in by_id]
    assert foreign == [], f"lines for requests nobody sent: {foreign[:5]}"
    assert len(results) + len(errors) == total

    # Every output is the answer to its own request, in input order.
    order = {c: i for i, c in enumerate(by_id)}
    assert [r["custom_id"] for r in results] == sorted((r["custom_id"] for r in results), key=order.__getitem__)
    wrong = [
        line["custom_id"]
        for line in results
        if line["error"] is not None
        or line["response"]["status_code"] != 200
        or line["response"]["body"]["choices"][0]["message"]["content"] != instant_answer(by_id[line["custom_id"]])
    ]
    assert wrong == [], f"{len(wrong)} outputs do not answer their request, e.g. {wrong[:5]}"

    # Progress and stats count each request once.
    assert job["progress"]["completed"] == len(results), job["progress"]
    assert job["progress"]["failed"] == len(errors), job["progress"]
    assert job["progress"]["total"] == total
    stats = outcome.results_body["stats"]
    assert (stats["total"], stats["successful"], stats["failed"]) == (total, len(results), len(errors)), stats
    if watch is not None:
        assert watch.max_done <= total, f"progress claimed {watch.max_done} of {total} requests done"

    # One webhook delivery id, delivered (2xx) at least once, telling the final status.
    ids = {d.webhook_id for d in outcome.deliveries}
    assert len(ids) == 1 and None not in ids, f"webhook ids received: {ids}"
    assert any(d.ok for d in outcome.deliveries)
    assert {d.json()["status"] for d in outcome.deliveries} == {job["status"]}
