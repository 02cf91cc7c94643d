"""End-to-end throughput against the engine alone, side by side in one run.

1. `LLM.chat` over N candidate requests in one warm process, with the engine
   settings and the request->SamplingParams mapping the workers use.
2. The same N lines as one job through the stack: HTTP submit, prepare, chord of
   shards on a warm LLM worker (real Celery on the real Redis), finalize, storage.
   Timed from the POST to `completed`, for each shard size asked for.

Prints requests/s for each and the ratio e2e / direct. Machines here are noisy:
compare the figures of one run, not across runs.

    .venv/bin/python scripts/bench_e2e.py [--count 2000] [--shard-sizes 256,1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "tiny-random"
WARMUP = 64


def direct(count: int) -> dict:
    """Runs in a child process: vLLM must own its process, as on a worker."""
    from batchsvc.inference.engine import VLLMEngine
    from batchsvc.inference.models import ModelCatalog
    from batchsvc.inference.sampling import engine_options
    from batchsvc.settings import get_settings
    from tests.support.examples import candidate_requests

    spec = ModelCatalog.from_settings(get_settings()).get(MODEL)
    assert spec is not None
    engine = VLLMEngine(spec)
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    def run(requests: list[dict]) -> tuple[float, int]:
        convs, params = [], []
        for r in requests:
            opts = engine_options(r["body"], spec)
            p = SamplingParams(**opts.sampling)
            if opts.structured:
                p.structured_outputs = StructuredOutputsParams(**opts.structured)
            convs.append(r["body"]["messages"])
            params.append(p)
        started = time.perf_counter()
        outputs = engine.llm.chat(
            convs, params, use_tqdm=False, chat_template_kwargs=dict(spec.chat_template_kwargs) or None
        )
        return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)

    requests = candidate_requests(count + WARMUP, MODEL, seed=11)
    run(requests[count:])  # warm-up on other lines: grammar compile, caches
    seconds, tokens = run(requests[:count])
    return {"requests": count, "seconds": seconds, "req_per_sec": count / seconds, "output_tokens": tokens}


def end_to_end(count: int, shard_sizes: list[int]) -> list[dict]:
    from tests.conftest import make_settings
    from tests.support.client import upload
    from tests.support.examples import write_candidates
    from tests.support.stack import Stack, unique_names

    results = []
    for shard_size in shard_sizes:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            tmp_path = Path(tmp)
            settings = make_settings(tmp_path, shard_size=shard_size, **unique_names())
            stack = Stack(settings, tmp_path, llm_models=[MODEL]).start()
            try:
                write_candidates(tmp_path / "warm.jsonl", WARMUP, seed=13)
                warm = upload(stack.client, (tmp_path / "warm.jsonl").read_bytes(), MODEL).get_json()["job_id"]
                stack.wait_for_job(warm)
                write_candidates(tmp_path / "bench.jsonl", count, seed=11)
                data = (tmp_path / "bench.jsonl").read_bytes()
                started = time.perf_counter()
                job_id = upload(stack.client, data, MODEL).get_json()["job_id"]
                job = stack.wait_for_job(job_id, timeout=3600, interval=0.05)  # the clock's resolution
                seconds = time.perf_counter() - started
                assert job["status"] == "completed", job
                stats = stack.client.get(f"/v1/batch/{job_id}/results").get_json()["stats"]
                results.append(
                    {
                        "shard_size": shard_size,
                        "requests": count,
                        "seconds": seconds,
                        "req_per_sec": count / seconds,
                        "successful": stats["successful"],
                        "output_tokens": stats["completion_tokens"],
                    }
                )
            finally:
                stack.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--shard-sizes", default="256,1024")
    parser.add_argument("--direct-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct_only:
        print(json.dumps(direct(args.count)))
        return 0

    env = {**os.environ, "BATCHSVC_MODELS_FILE": str(ROOT / "tests" / "models.yaml")}
    child = subprocess.run(
        [sys.executable, __file__, "--direct-only", "--count", str(args.count)],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    base = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"direct LLM.chat, one warm process: {base['requests']} requests in {base['seconds']:.1f} s "
          f"= {base['req_per_sec']:.1f} req/s ({base['output_tokens']} output tokens)")  # fmt: skip
    for row in end_to_end(args.count, [int(s) for s in args.shard_sizes.split(",")]):
        print(f"end to end, shard_size {row['shard_size']}: {row['requests']} requests in {row['seconds']:.1f} s "
              f"= {row['req_per_sec']:.1f} req/s ({row['successful']} ok, {row['output_tokens']} output tokens); "
              f"ratio to direct {row['req_per_sec'] / base['req_per_sec']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
