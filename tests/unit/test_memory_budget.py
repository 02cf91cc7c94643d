"""The LLM worker's memory budget (batchsvc/inference/memory_budget.py), in this
process and real child processes; the fault suite runs it in a real worker
(tests/faults/test_memory_budget.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import psutil
import pytest

from batchsvc.inference import memory_budget
from batchsvc.inference.memory_budget import (
    EXIT_OVER_BUDGET,
    EXIT_REQUEST_BLAMED,
    MemoryWatch,
    Recorded,
    exposed,
    tree_rss,
)
from batchsvc.settings import Settings

# A child that touches `mb` MB, says so, and waits.
_HOLD = "import sys; b = b'x' * ({mb} * 2**20); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-c", _HOLD.format(mb=120)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        yield child
        child.kill()


def test_the_shipped_budget() -> None:
    shipped = Settings()
    # A GPU worker of a 1-4B model: a few GB per engine process, the compiler child's
    # own budget, and the weights paged in while they load (settings.py says why).
    assert shipped.worker_max_rss_mb == 16384
    assert shipped.worker_max_rss_mb > 2 * shipped.grammar_compile_memory_mb


def test_the_tree_counts_the_children(holder: subprocess.Popen[str]) -> None:
    alone = psutil.Process().memory_info().rss / 2**20
    total, children = tree_rss()
    assert holder.pid in [c.pid for c in children]
    assert total >= alone + 120


class Exits:
    """Stands in for os._exit: records the code instead of ending pytest."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_under_the_budget_nothing_happens() -> None:
    exits = Exits()
    watch = MemoryWatch(1000, sample=lambda: (999.0, []), exit=exits)
    assert watch.check() is False
    assert exits.codes == [] and watch.peak_mb == 999.0


def test_a_budget_of_0_watches_nothing() -> None:
    exits = Exits()
    watch = MemoryWatch(0, sample=lambda: (10**6, []), exit=exits)
    assert watch.check() is False
    assert watch.start()._thread is None
    assert exits.codes == []


def test_over_the_budget_it_tells_the_running_work_kills_its_children_and_exits(
    holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    exits = Exits()
    told: list[tuple[str, float, int]] = []
    watch = MemoryWatch(1000, sample=lambda: (1500.0, [psutil.Process(holder.pid)]), exit=exits)
    with (
        exposed(lambda rss, budget: told.append(("task", rss, budget)) or None),
        exposed(lambda rss, budget: told.append(("shard", rss, budget)) or Recorded("shard j/0: 3 in flight", True)),
    ):
        assert watch.check() is True
    assert told == [("shard", 1500.0, 1000), ("task", 1500.0, 1000)]  # innermost first
    assert exits.codes == [EXIT_REQUEST_BLAMED]  # requests were blamed: not a crash
    assert holder.wait(timeout=10) == -9
    (line,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "1500 MB resident, over worker_max_rss_mb 1000 MB; shard j/0: 3 in flight" in line.getMessage()


def test_a_record_that_hangs_or_fails_does_not_keep_the_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(memory_budget, "_NOTIFY_TIMEOUT_S", 0.2)
    exits = Exits()
    never = threading.Event()

    def hang(rss: float, budget: int) -> Recorded:
        never.wait()
        return Recorded("never said", True)

    def fail(rss: float, budget: int) -> Recorded:
        raise ConnectionError("redis is down")

    watch = MemoryWatch(100, sample=lambda: (200.0, []), exit=exits)
    with exposed(hang), exposed(fail):
        watch.check()
    never.set()
    assert exits.codes == [EXIT_OVER_BUDGET]  # nobody blamed: a crash
    assert "could not record" in caplog.text and "exiting without it" in caplog.text
    assert "never said" not in caplog.text


def test_the_thread_sees_real_growth() -> None:
    exits = Exits()
    start, _ = tree_rss()
    # The real sample, without its children: the stand-in exit must not kill pytest's.
    watch = MemoryWatch(int(start) + 60, interval_s=0.05, sample=lambda: (tree_rss()[0], []), exit=exits).start()
    try:
        grown = b"y" * (120 * 2**20)
        assert exits.called.wait(30), f"no exit; peak {watch.peak_mb:.0f} MB"
    finally:
        watch.stop()
    assert len(grown) and exits.codes == [EXIT_OVER_BUDGET]  # nothing registered: nothing to blame
    assert watch.peak_mb > start + 60
