"""Plain pieces of the observability code, without a stack: answer quality, the GPU
and system readings, the log formats."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from batchsvc import logs
from batchsvc.inference.outputs import CHAT_URL, Choice, completion_body, not_run_line, success_line
from batchsvc.inference.quality import MAX_VALUES, OTHER, Quality
from batchsvc.metrics import GPU_FAMILIES, GPUCollector, MemoryBudgetCollector, SystemCollector
from tests.support.metrics import metric_value, sample_names

SCHEMA = {
    "type": "object",
    "properties": {"recommendation": {"enum": ["yes", "no"]}, "score": {"type": "integer"}},
    "required": ["recommendation", "score"],
}
BODY = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}}


def answer(text: str) -> dict[str, Any]:
    body = completion_body(
        url=CHAT_URL, job_id="j", custom_id="c", model="m", choices=[Choice(0, text, "stop", 3)], prompt_tokens=1
    )
    return success_line("j", "c", body)


def test_quality_counts_schema_validity_and_the_answer_field() -> None:
    quality = Quality()
    quality.add(BODY, CHAT_URL, answer('{"recommendation": "yes", "score": 90}'), "recommendation")
    quality.add(BODY, CHAT_URL, answer('{"recommendation": "no", "score": "high"}'), "recommendation")  # invalid
    quality.add(BODY, CHAT_URL, answer('{"recommendation": "yes", "sco'), "recommendation")  # cut off: invalid
    quality.add(BODY, CHAT_URL, not_run_line("j", "d", "batch_cancelled", "cancelled"), "recommendation")  # not counted
    quality.add({"messages": []}, CHAT_URL, answer('{"recommendation": "maybe"}'), "recommendation")  # no schema
    assert quality.to_dict("recommendation") == {
        "schema_checked": 3,
        "schema_valid": 1,
        "schema_invalid": 2,
        "answer_field": "recommendation",
        "answers": {"yes": 1, "maybe": 1, "no": 1},
    }


def test_quality_keeps_a_bounded_number_of_answer_values() -> None:
    quality = Quality()
    for i in range(MAX_VALUES + 5):
        quality.add({}, CHAT_URL, answer(orjson.dumps({"recommendation": f"v{i}"}).decode()), "recommendation")
    merged = Quality()
    merged.merge(quality)
    merged.merge(quality)
    assert len(merged.answers) == MAX_VALUES + 1
    assert merged.answers[OTHER] == 10 and merged.answers["v0"] == 2


def scrape(*collectors: Any) -> str:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def test_a_host_without_a_gpu_exports_a_gpu_count_of_zero_and_no_gpu_series() -> None:
    # The real NVML bindings on this machine, which has no NVIDIA driver.
    text = scrape(GPUCollector())
    assert metric_value(text, "batchsvc_gpu_count") == 0
    assert not {name for name, _ in GPU_FAMILIES.values()} & sample_names(text)


class StandInNVML:
    """NVML's interface with two GPUs' readings, for the code path this machine cannot
    reach for real (there is no GPU here). The values are made up."""

    NVML_TEMPERATURE_GPU = 0

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=40 + handle * 50)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 70 + handle * 15

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 350_000  # milliwatts


def test_gpu_readings_become_one_series_per_gpu() -> None:
    text = scrape(GPUCollector(StandInNVML()))
    assert metric_value(text, "batchsvc_gpu_count") == 2
    assert metric_value(text, "batchsvc_gpu_utilization_ratio", gpu="1", name="NVIDIA H100 80GB HBM3") == 0.9
    assert metric_value(text, "batchsvc_gpu_temperature_celsius", gpu="1") == 85
    assert metric_value(text, "batchsvc_gpu_memory_used_bytes", gpu="0") == 2**30
    assert metric_value(text, "batchsvc_gpu_power_watts", gpu="0") == 350


def test_system_readings() -> None:
    text = scrape(SystemCollector(["/", "/no/such/path"]))
    assert 0 < metric_value(text, "batchsvc_system_memory_used_ratio") < 1
    assert 0 < metric_value(text, "batchsvc_system_disk_free_ratio", path="/") <= 1
    assert metric_value(text, "batchsvc_system_memory_total_bytes") > 0
    assert 'path="/no/such/path"' not in text


def test_memory_budget_readings() -> None:
    text = scrape(MemoryBudgetCollector(lambda: (1536.0, 16384)))
    assert metric_value(text, "batchsvc_worker_resident_memory_bytes") == 1536 * 2**20
    assert metric_value(text, "batchsvc_worker_memory_budget_bytes") == 16384 * 2**20
    assert "batchsvc_worker_" not in scrape(MemoryBudgetCollector(lambda: None))  # before the first sample


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("batchsvc.pipeline.shards", logging.INFO, "", 0, message, None, None)


def test_log_lines_carry_the_job_context_only_while_it_is_set() -> None:
    json_format, text_format, context = logs.JSONFormatter("worker"), logs.TextFormatter(), logs.ContextFilter()
    with logs.job_context(job_id="batch_1", shard=3, tenant="acme"):
        inside = record("shard resumes")
        context.filter(inside)
    outside = record("idle")
    context.filter(outside)
    entry = orjson.loads(json_format.format(inside))
    assert {k: entry[k] for k in ("message", "job_id", "shard", "tenant", "component")} == {
        "message": "shard resumes",
        "job_id": "batch_1",
        "shard": 3,
        "tenant": "acme",
        "component": "worker",
    }
    assert text_format.format(inside).endswith("shard resumes [job_id=batch_1 shard=3 tenant=acme]")
    assert not {"job_id", "shard", "tenant"} & set(orjson.loads(json_format.format(outside)))
