"""The multi-GPU launcher (scripts/llm_workers.sh), run on the CPU as if the host
had two GPUs (CUDA_VISIBLE_DEVICES=0,1): one worker per GPU, pinned to it, named
after it, each consuming its own model's queue and running that model's jobs.
GPU 0 serves the instant engine and GPU 1 the tiny vLLM model, so only one real
engine loads on this 2-core machine."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import orjson

from batchsvc.settings import PROJECT_ROOT
from tasks.names import llm_queue
from tests.conftest import make_settings
from tests.support.client import upload
from tests.support.stack import Stack, settings_env, stop_group, unique_names, wait_until

HOST = socket.gethostname()


def jsonl(model: str, count: int) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "rate this candidate"}], "max_tokens": 4}
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body} for i in range(count)
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def test_two_gpus_get_two_pinned_workers_each_on_its_models_queue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, shard_size=10, **unique_names())
    stack = Stack(settings, tmp_path, llm_models=["instant-test"])  # its own LLM worker is not started
    env = {
        **os.environ,
        **settings_env(stack.settings),
        "CUDA_VISIBLE_DEVICES": "0,1",
        "BATCHSVC_GPU_MODELS": "0:instant-test 1:tiny-random",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "llm_workers.log").open("wb")
    launcher = subprocess.Popen(
        ["scripts/llm_workers.sh"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stack.cpu.start()
        stack.cpu.wait_ready()

        def warm() -> dict | None:
            live = {w.name: w for w in stack.services.workers.live()}
            return live if len(live) == 2 and all(w.state == "idle" for w in live.values()) else None

        workers = wait_until(warm, 300, what="both GPU workers warm")
        gpu0, gpu1 = workers[f"llm-gpu0@{HOST}"], workers[f"llm-gpu1@{HOST}"]
        assert (gpu0.devices, gpu0.model, gpu0.queues) == ("0", "instant-test", [llm_queue(settings, "instant-test")])
        assert (gpu1.devices, gpu1.model, gpu1.queues) == ("1", "tiny-random", [llm_queue(settings, "tiny-random")])
        assert gpu0.pid != gpu1.pid

        jobs = {}
        for model in ("instant-test", "tiny-random"):
            response = upload(stack.client, jsonl(model, 30), model)
            assert response.status_code == 202, response.get_json()
            jobs[model] = response.get_json()["job_id"]
        for job_id in jobs.values():
            assert stack.wait_for_job(job_id, timeout=300)["status"] == "completed"
        for name, model in ((gpu0.name, "instant-test"), (gpu1.name, "tiny-random")):
            ran = {(s.split("/")[0], m) for s, m, _ in stack.services.workers.shards_of(name)}
            assert ran == {(jobs[model], model)}, (name, ran)
    finally:
        stop_group(launcher)
        log.close()
        stack.stop()
