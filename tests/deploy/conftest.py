"""The deployment artefacts read as data: the Procfile, the Dockerfile, the compose
file. No Docker engine or cluster runs here, so these tests check the files against
the specifications and against the code they start."""

from __future__ import annotations

import gc
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from batchsvc.settings import PROJECT_ROOT
from tests.unit.conftest import app, client, make_app, settings

__all__ = ["app", "client", "make_app", "settings"]


def procfile() -> dict[str, str]:
    """Entry name -> command, read the way scripts/procfile_exec.sh reads it."""
    lines = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    return {m[1]: m[2].strip() for line in lines if (m := re.match(r"^([\w-]+):(.*)$", line))}


def program_of(command: str) -> str:
    """The executable a Procfile command starts: its first word, past `env NAME=value ...`."""
    words = shlex.split(command)
    if words[0] == "env":
        words = [w for w in words[1:] if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]
    return words[0]


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), from the Dockerfile."""
    text = re.sub(r"\\\n", " ", (PROJECT_ROOT / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = m[1] or f"stage{len(stages)}"
            stages[current] = []
        stages.setdefault(current, []).append(line)
    return stages


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def warm_shutdown_s() -> float:
    """How long an LLM worker told to stop (TERM) may take to checkpoint its running shard.
    It stops at the shard's next result (tasks/leasing.py `shutting_down`), writes the
    checkpoint and gives the rest back. A healthy engine gives a result at least every
    `stuck_after_s` (past that the watchdog calls it hung), and between results the
    shard has checkpointed at most `progress_interval_s` ago; the 60 s are for the
    engine to stop and the last writes to Redis and storage on a loaded host. KILL
    before then still loses nothing finished: the lease lapses after `lease_ttl_s`
    and the shard resumes from its last checkpoint elsewhere."""
    from batchsvc.settings import load_settings

    settings = load_settings(environ={})
    return settings.stuck_after_s + settings.progress_interval_s + 60


def duration_s(text: str) -> float:
    """A compose duration ("90s", "2m", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(a + u for a, u in parts) == text, text
    return sum(float(amount) * units[unit] for amount, unit in parts)


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage() -> Iterator[None]:
    """Collect after each module. The apps of the Flask fixtures drop their Redis clients
    without closing them; collected during the run, redis-py's finalizer closes their
    sockets, but left to interpreter exit they are finalized unclosed, and pytest's
    unraisable-exception check (filterwarnings = error) fails the whole session."""
    yield
    gc.collect()
