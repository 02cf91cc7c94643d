"""Redis memory and storage bytes of one real job, for the sizing in docs/deployment.md.

Runs one job of N candidate requests through a real stack (the HTTP API, a cpu and an
LLM worker on the tiny model with the real vLLM engine) on a private redis-server, so
every key in it is this job's, and local storage in a temporary directory. Then:

- Redis: MEMORY USAGE of every key, grouped by database and key shape, at the job's
  end; and the peak of the broker's queue lists while it ran (sampled every 50 ms);
- storage: the bytes of every object, grouped by kind (input, shard inputs,
  checkpoint parts, shard outputs, results, ...), per request.

    .venv/bin/python scripts/measure_footprint.py [--count 2000] [--shard-size 256]

The tiny model's answers are the candidate-score JSON of examples/, as a real model's
are, so output bytes per request are those of the real job; prompt bytes are the
example's. Scale by your own prompt and answer sizes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "tiny-random"


def shape(key: str, job_id: str) -> str:
    """A key with its ids replaced by placeholders: one line per kind of key."""
    key = key.replace(job_id, "{job}")
    key = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "{uuid}", key)
    key = re.sub(r"(?<![0-9a-z])(?=[0-9a-f]*\d)[0-9a-f]{6,}(?![0-9a-z])", "{id}", key)
    return re.sub(r"\d+", "{n}", key)


def redis_usage(url_base: str, job_id: str) -> dict[tuple[int, str], list[int]]:
    usage: dict[tuple[int, str], list[int]] = defaultdict(list)
    for db in range(4):
        client = redis.Redis.from_url(f"{url_base}/{db}")
        for key in client.scan_iter(count=1000):
            usage[(db, shape(key.decode(errors="replace"), job_id))].append(client.memory_usage(key, samples=0) or 0)
        client.close()
    return usage


def storage_usage(root: Path, job_id: str) -> dict[str, list[int]]:
    usage: dict[str, list[int]] = defaultdict(list)
    for path in root.rglob("*"):
        if path.is_file():
            usage[shape(str(path.relative_to(root)), job_id)].append(path.stat().st_size)
    return usage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=256)
    args = parser.parse_args()

    from tests.conftest import make_settings
    from tests.support.client import upload
    from tests.support.examples import write_candidates
    from tests.support.redis_server import RedisServer
    from tests.support.stack import Stack, unique_names

    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        tmp_path = Path(tmp)
        server = RedisServer.start(tmp_path / "redis")
        base = f"redis://127.0.0.1:{server.port}"
        try:
            settings = make_settings(
                tmp_path,
                broker_url=f"{base}/0",
                result_backend=f"{base}/1",
                state_redis_url=f"{base}/2",
                ratelimit_storage_url=f"{base}/3",
                shard_size=args.shard_size,
                **unique_names(),
            )
            stack = Stack(settings, tmp_path, llm_models=[MODEL]).start()
            try:
                write_candidates(tmp_path / "job.jsonl", args.count, seed=11)
                data = (tmp_path / "job.jsonl").read_bytes()
                broker = redis.Redis.from_url(f"{base}/0")
                peak = {"bytes": 0, "messages": 0}
                done = threading.Event()

                def sample() -> None:
                    prefix = settings.llm_queue_prefix
                    while not done.is_set():
                        keys = [k for k in broker.scan_iter(f"{prefix}.*")] + [
                            k for k in broker.scan_iter(f"{settings.cpu_queue}*")
                        ]
                        total = sum(broker.memory_usage(k, samples=0) or 0 for k in keys)
                        messages = sum(broker.llen(k) for k in keys if broker.type(k) == b"list")
                        if total > peak["bytes"]:
                            peak.update(bytes=total, messages=messages)
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                started = time.perf_counter()
                job_id = upload(stack.client, data, MODEL).get_json()["job_id"]
                job = stack.wait_for_job(job_id, timeout=3600, interval=0.2)
                seconds = time.perf_counter() - started
                done.set()
                sampler.join()
                assert job["status"] == "completed", job
                used_memory = redis.Redis.from_url(f"{base}/0").info("memory")["used_memory"]
                keys = redis_usage(base, job_id)
                objects = storage_usage(Path(settings.storage_local_root), job_id)
            finally:
                stack.stop()
        finally:
            server.stop()

    n, shards = args.count, -(-args.count // args.shard_size)
    print(f"one job: {n} requests, shard_size {args.shard_size} ({shards} shards), completed in {seconds:.1f} s")
    print(f"input file: {len(data)} bytes = {len(data) / n:.0f} bytes/request")
    print("\nRedis at the job's end (MEMORY USAGE per key; db 0 broker, 1 results, 2 job state, 3 rate limits):")
    total = 0
    for (db, name), sizes in sorted(keys.items()):
        total += sum(sizes)
        print(f"  db{db} {name:60s} {len(sizes):5d} keys {sum(sizes):9d} bytes")
    print(f"  all keys: {total} bytes = {total / n:.1f} bytes/request; redis used_memory {used_memory} bytes")
    print(f"  broker queues at their peak: {peak['bytes']} bytes for {peak['messages']} waiting messages")
    print("\nstorage at the job's end:")
    stored = 0
    for name, sizes in sorted(objects.items()):
        stored += sum(sizes)
        print(f"  {name:70s} {len(sizes):5d} objects {sum(sizes):10d} bytes = {sum(sizes) / n:7.1f} bytes/request")
    print(f"  all objects: {stored} bytes = {stored / n:.0f} bytes/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
