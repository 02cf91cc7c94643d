"""LLM workers as a fleet: each keeps its record (model, state, current shard,
engine load time) in Redis through batchsvc/store/workers.py, and obeys one
remote-control command, `swap_model`, that moves it to another model without a
restart.

A solo-pool worker runs control commands in its main loop, between shards: a
swap asked for during a shard waits for that shard to finish (nothing is
interrupted or lost). It then stops consuming its old model's queue, unloads the
engine (freeing accelerator memory), loads the new model and consumes the new
model's queue. Shards of the old model stay queued for other workers."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from celery import signals
from celery.worker.control import control_command

from batchsvc.inference.engine import get_engine, unload_engines
from batchsvc.inference.memory_budget import MemoryWatch
from batchsvc.inference.models import ModelSpec
from batchsvc.services import current_services
from batchsvc.store.workers import WorkerRecord, WorkerState
from tasks.names import SHARD, SWAP_MODEL, llm_queue

log = logging.getLogger(__name__)


class _Fleet:
    """This process's worker record, written on every change and by a heartbeat."""

    def __init__(self) -> None:
        self.record: WorkerRecord | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.memory: MemoryWatch | None = None  # the memory budget's watch (LLM workers)

    def update(self, **changes: Any) -> None:
        if self.record is None:
            return
        with self.lock:
            self.record = dataclasses.replace(self.record, **changes)
            current_services().workers.save(self.record)

    def beat(self) -> None:
        interval = current_services().settings.worker_heartbeat_s
        while not self.stop.wait(interval):
            try:
                self.update()
            except Exception:  # Redis down: the record expires, and the next beat writes it again
                log.warning("worker record not written", exc_info=True)


_fleet = _Fleet()


def memory_watch() -> MemoryWatch | None:
    """This LLM worker's memory watch (None in a CPU worker)."""
    return _fleet.memory


def _llm_queues(consumer: Any) -> list[str]:
    prefix = current_services().settings.llm_queue_prefix + "."
    return sorted(q.name for q in consumer.task_consumer.queues if q.name.startswith(prefix))


def load_model(spec: ModelSpec) -> None:
    """Load `spec`'s engine (or find it warm), and record how long that took."""
    _fleet.update(state=WorkerState.LOADING, model=spec.alias)
    started = time.monotonic()
    get_engine(spec)
    seconds = round(time.monotonic() - started, 3)
    log.info("engine for %s ready in %.1fs", spec.alias, seconds)
    _fleet.update(state=WorkerState.IDLE, engine_loaded_at=time.time(), engine_load_s=seconds)


@signals.worker_ready.connect
def _register(sender: Any, **_: object) -> None:
    """An LLM worker (one that consumes model queues) records itself, then loads
    BATCHSVC_PRELOAD_MODEL, so the first shard finds the engine warm."""
    queues = _llm_queues(sender)
    if not queues:
        return  # a CPU worker
    svc = current_services()
    _fleet.record = WorkerRecord(
        name=sender.hostname, queues=queues, devices=os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid()
    )
    svc.workers.clear_swap(sender.hostname)
    _fleet.update()
    threading.Thread(target=_fleet.beat, name="worker-record", daemon=True).start()
    # Watched from before the model loads: loading is where a worker's memory first peaks.
    _fleet.memory = MemoryWatch(svc.settings.worker_max_rss_mb).start()
    alias = os.environ.get("BATCHSVC_PRELOAD_MODEL")
    if not alias:
        return
    spec = svc.models.get(alias)
    if spec is None:
        log.error("BATCHSVC_PRELOAD_MODEL=%s is not in the model catalogue", alias)
        return
    load_model(spec)


@signals.worker_shutdown.connect
def _deregister(**_: object) -> None:
    if _fleet.memory is not None:
        _fleet.memory.stop()
    if _fleet.record is not None:
        _fleet.stop.set()
        current_services().workers.remove(_fleet.record.name)


@signals.task_prerun.connect
def _shard_started(sender: Any = None, args: Any = None, **_: object) -> None:
    if getattr(sender, "name", None) == SHARD and args:
        _fleet.update(state=WorkerState.BUSY, current_shard=f"{args[0]}/{args[1]}")


@signals.task_postrun.connect
def _shard_ended(sender: Any = None, args: Any = None, **_: object) -> None:
    if getattr(sender, "name", None) != SHARD or not args or _fleet.record is None:
        return
    svc = current_services()
    try:
        model = svc.jobs.get(args[0]).model
    except Exception:  # the job is gone, or Redis blinked: the history says so
        model = "?"
    svc.workers.record_shard(_fleet.record.name, f"{args[0]}/{args[1]}", model, time.time())
    _fleet.update(state=WorkerState.IDLE, current_shard=None, shards_run=_fleet.record.shards_run + 1)


# SWAP_MODEL: also reachable as `celery -A tasks.worker control swap_model ALIAS -d NODE`.
@control_command(
    name=SWAP_MODEL, args=[("model", str), ("requested_at", float)], signature="<model alias> [requested_at]"
)
def swap_model(state: Any, model: str, requested_at: float | None = None) -> dict[str, Any]:
    """Move this worker to `model`: stop consuming the other model queues, unload
    the engine, load `model`, consume its queue. Runs between shards."""
    consumer = state.consumer
    svc = current_services()
    spec = svc.models.get(model)
    if spec is None or _fleet.record is None:
        return {"error": f"cannot swap to {model!r}: unknown model, or not an LLM worker"}
    started = time.time()
    new_queue = llm_queue(svc.settings, model)
    old_model = _fleet.record.model
    for queue in _llm_queues(consumer):
        if queue != new_queue:
            consumer.cancel_task_queue(queue)
    _fleet.update(state=WorkerState.LOADING, queues=_llm_queues(consumer))
    t0 = time.monotonic()
    unload_engines()
    unload_s = round(time.monotonic() - t0, 3)
    load_model(spec)
    if new_queue not in _llm_queues(consumer):
        consumer.add_task_queue(new_queue)
    swap = {
        "from": old_model,
        "to": model,
        "waited_s": round(started - requested_at, 3) if requested_at else None,  # the running shard's rest
        "unload_s": unload_s,
        "load_s": _fleet.record.engine_load_s,
        "done_at": time.time(),
    }
    svc.workers.clear_swap(_fleet.record.name)
    _fleet.update(queues=_llm_queues(consumer), last_swap=swap)
    log.info("swapped %s -> %s: %s", old_model, model, swap)
    return {"ok": swap}
