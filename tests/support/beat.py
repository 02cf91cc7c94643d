"""Celery beat as a process of a test stack, for tests that rely on the sweeper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchsvc.settings import PROJECT_ROOT
from tests.support.stack import _die_with_parent, stop_group, wait_until


class Beat:
    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_path = log_dir / "beat.log"
        self.schedule_path = log_dir / "beat-schedule"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Beat:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat",
                 "-s", str(self.schedule_path), "--loglevel", "INFO"],
                cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        wait_until(lambda: "beat: Starting..." in self.log_path.read_text(errors="replace"), timeout, what="beat")
        return self

    def stop(self) -> None:
        stop_group(self.process)
