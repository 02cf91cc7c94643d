"""Run the Procfile's processes in the background: `up`, `down`, `status`.

`up` is idempotent: it starts whichever processes are not running (say, a worker
that died) and leaves the rest alone. The API's admin key comes from
BATCHSVC_BOOTSTRAP_API_KEY, or else from var/bootstrap-api-key, made on the
first `up` (readable by its owner only). Logs go to var/log/<name>.log, pids to
var/run/<name>.pid. Each process leads its own process group, so `down` also
stops what it started (the GPU launcher's workers, gunicorn's workers).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "var" / "run"
LOGS = ROOT / "var" / "log"
DEFAULT_PROCESSES = ["web", "cpu", "worker", "beat", "flower"]


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def recorded_pid(name: str) -> int | None:
    try:
        return int((RUN / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_of(name: str) -> int | None:
    """The pid of a running process of ours: alive, not a zombie, and still
    leading the process group it was started in (a reused pid is not ours)."""
    pid = recorded_pid(name)
    if pid is None:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z" or os.getpgid(pid) != pid:
            return None
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return pid


def kill_group(pgid: int, timeout: float) -> None:
    """TERM the whole group (a dead leader may leave children behind), then KILL."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


BOOTSTRAP_KEY_FILE = ROOT / "var" / "bootstrap-api-key"


def bootstrap_key() -> str:
    """The admin key the web processes install: the environment's, or a local one made once."""
    if os.environ.get("BATCHSVC_BOOTSTRAP_API_KEY"):
        return os.environ["BATCHSVC_BOOTSTRAP_API_KEY"]
    if not BOOTSTRAP_KEY_FILE.exists():
        BOOTSTRAP_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(BOOTSTRAP_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("bsk_" + secrets.token_urlsafe(32))
    return BOOTSTRAP_KEY_FILE.read_text().strip()


def start(name: str, command: str) -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    # Prometheus multiprocess files of the last run (var/metrics/<name>) must not add in.
    shutil.rmtree(ROOT / "var" / "metrics" / name, ignore_errors=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("ab")
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=ROOT,
        env={**os.environ, "BATCHSVC_BOOTSTRAP_API_KEY": bootstrap_key()},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (RUN / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def stop(name: str, timeout: float = 30.0) -> bool:
    running = pid_of(name) is not None
    pgid = recorded_pid(name)
    if pgid is not None:
        kill_group(pgid, timeout)
    (RUN / f"{name}.pid").unlink(missing_ok=True)
    return running


def wait_for_web(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("names", nargs="*", help=f"processes (default: {' '.join(DEFAULT_PROCESSES)})")
    args = parser.parse_args()
    entries = procfile()
    names = args.names or DEFAULT_PROCESSES
    unknown = [n for n in names if n not in entries]
    if unknown:
        parser.error(f"not in the Procfile: {', '.join(unknown)}")

    if args.action == "status":
        for name in names:
            pid = pid_of(name)
            print(f"{name:8} {'running pid ' + str(pid) if pid else 'stopped'}")
        return 0
    if args.action == "down":
        for name in reversed(names):
            print(f"{name:8} {'stopped' if stop(name) else 'was not running'}")
        return 0

    for name in names:
        pid = pid_of(name)
        if pid:
            print(f"{name:8} already running (pid {pid})")
        else:
            stop(name)  # what a dead leader left of its group, e.g. a worker whose launcher was killed
            print(f"{name:8} started (pid {start(name, entries[name])}), log var/log/{name}.log")
    if "web" in names:
        url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
        if not wait_for_web(url, 60):
            print(f"the API did not answer at {url}; see var/log/web.log", file=sys.stderr)
            return 1
        print(f"API ready at {url}")
        where = "BATCHSVC_BOOTSTRAP_API_KEY" if os.environ.get("BATCHSVC_BOOTSTRAP_API_KEY") else BOOTSTRAP_KEY_FILE
        print(f"admin API key: {where} (make others with `batchsvc keys create`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
