"""Run the Procfile's processes under supervisord: `up`, `down`, `status`.

supervisord (from PyPI) keeps them running: a process that exits unexpectedly
is restarted; one that dies before `startsecs` is retried with a growing backoff
(1 s, 2 s, ...) `startretries` times, then marked FATAL; and scripts/crashguard.py
stops any process that crashes `restart_max_crashes` times within
`restart_window_s` (batchsvc settings), and records why. `status` says so.
(In compose or Kubernetes the platform restarts containers instead; this is the
embedded stack's supervisor.)

`up` is idempotent: it starts supervisord if it is not running and then whichever
processes are not running (a FATAL or given-up one included), leaving the rest
alone. `down` stops the named processes, or all of them and supervisord. The
API's admin key comes from BATCHSVC_BOOTSTRAP_API_KEY, or else from
var/bootstrap-api-key, made on the first `up` (readable by its owner only).
Logs go to var/log/<name>.log, supervisord's own to var/log/supervisord.log.
BATCHSVC_STACK_VAR and BATCHSVC_STACK_PROCFILE move var/ and the Procfile (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("BATCHSVC_STACK_VAR", ROOT / "var"))
PROCFILE = Path(os.environ.get("BATCHSVC_STACK_PROCFILE", ROOT / "Procfile"))
RUN = VAR / "run"
LOGS = VAR / "log"
CONF = RUN / "supervisord.conf"
SOCKET = RUN / "supervisor.sock"
METRICS = VAR / "metrics"
DEFAULT_PROCESSES = ["web", "cpu", "worker", "beat", "flower"]
BIN = Path(sys.executable).parent
# Seconds a process must stay up to count as started, and the start attempts
# supervisord makes before it marks a process FATAL.
START_SECS = 5
START_RETRIES = 3
# A worker's warm shutdown: a shard checkpoints at its next result, a finalize finishes.
STOP_WAIT_SECS = 60


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


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


def _quote(text: str) -> str:
    """A value for supervisord's ini file: it expands %(...)s, so % doubles."""
    return text.replace("%", "%%")


def supervisord_conf(entries: dict[str, str], max_crashes: int, window_s: float) -> str:
    guard = f"{sys.executable} {ROOT / 'scripts' / 'crashguard.py'} --max-crashes {max_crashes} --window-s {window_s}"
    sections = [
        f"[unix_http_server]\nfile={_quote(str(SOCKET))}\nchmod=0700\n",
        "[supervisord]\n"
        f"logfile={_quote(str(LOGS / 'supervisord.log'))}\npidfile={_quote(str(RUN / 'supervisord.pid'))}\n"
        f"childlogdir={_quote(str(LOGS))}\ndirectory={_quote(str(ROOT))}\n",
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[supervisorctl]\nserverurl=unix://{_quote(str(SOCKET))}\n",
        f"[eventlistener:crashguard]\n"
        f"command={_quote(guard)}\n"
        "events=PROCESS_STATE_EXITED,PROCESS_STATE_FATAL,PROCESS_STATE_RUNNING\n"
        f"directory={_quote(str(ROOT))}\nautorestart=true\n"
        f"stderr_logfile={_quote(str(LOGS / 'crashguard.log'))}\n",
    ]
    for name, command in entries.items():
        sections.append(
            f"[program:{name}]\n"
            # Prometheus multiprocess files of the last run (var/metrics/<name>) must not add in,
            # whoever starts the process: `make up` or supervisord after a crash.
            f"command=bash -c {_quote(json.dumps(f'rm -rf {METRICS / name}; exec {command}'))}\n"
            f"directory={_quote(str(ROOT))}\n"
            # 75: an LLM worker over its memory budget that blamed a request (memory_budget.py):
            # restarted like a crash, but not counted as one by crashguard.
            "autostart=false\nautorestart=true\nexitcodes=0,75\n"
            f"startsecs={START_SECS}\nstartretries={START_RETRIES}\n"
            f"stopsignal=TERM\nstopwaitsecs={STOP_WAIT_SECS}\nstopasgroup=true\nkillasgroup=true\n"
            f"redirect_stderr=true\nstdout_logfile={_quote(str(LOGS / f'{name}.log'))}\n"
            "stdout_logfile_maxbytes=50MB\nstdout_logfile_backups=3\n"
        )
    return "\n".join(sections)


def rpc() -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{SOCKET}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisord_running() -> bool:
    try:
        return bool(rpc().getState()["statecode"] == 1)  # RUNNING
    except (OSError, xmlrpc.client.Fault):
        return False


def start_supervisord(entries: dict[str, str]) -> None:
    from batchsvc.settings import get_settings

    settings = get_settings()
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    CONF.write_text(supervisord_conf(entries, settings.restart_max_crashes, settings.restart_window_s))
    # Its children inherit this environment (settings overrides, the admin key).
    env = {**os.environ, "BATCHSVC_BOOTSTRAP_API_KEY": bootstrap_key()}
    subprocess.run([str(BIN / "supervisord"), "-c", str(CONF)], cwd=ROOT, env=env, check=True)
    deadline = time.monotonic() + 30
    while not supervisord_running():
        if time.monotonic() > deadline:
            raise SystemExit(f"supervisord did not start; see {LOGS / 'supervisord.log'}")
        time.sleep(0.2)


def gave_up() -> dict[str, dict[str, Any]]:
    """What crashguard recorded in Redis: program -> why it was stopped."""
    try:
        import redis

        from batchsvc.settings import get_settings

        settings = get_settings()
        client = redis.Redis.from_url(settings.state_redis_url, socket_timeout=3, socket_connect_timeout=3)
        raw = client.hgetall(f"{settings.redis_prefix}:supervisor:gave_up")
    except Exception:  # status must answer even with Redis down
        return {}
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def status(names: list[str]) -> int:
    if not supervisord_running():
        for name in names:
            print(f"{name:8} stopped (supervisord is not running)")
        return 0
    info = {p["name"]: p for p in rpc().getAllProcessInfo()}
    given_up = gave_up()
    for name in names:
        process = info.get(name)
        if process is None:
            print(f"{name:8} not configured (make down && make up)")
            continue
        line = f"{name:8} {process['statename']:8} {process['description']}"
        if name in given_up:
            entry = given_up[name]
            when = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
            line += f"  GAVE UP at {when}: {entry['reason']} (fix it, then make up)"
        print(line)
    return 0


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


def up(names: list[str], entries: dict[str, str]) -> int:
    if not supervisord_running():
        start_supervisord(entries)
    server = rpc()
    info = {p["name"]: p for p in server.getAllProcessInfo()}
    for name in names:
        state = info.get(name, {}).get("statename")
        if state in ("RUNNING", "STARTING", "BACKOFF"):
            print(f"{name:8} already {state.lower()} ({info[name]['description']})")
            continue
        try:
            server.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            print(f"{name:8} could not start: {fault.faultString}", file=sys.stderr)
            continue
        print(f"{name:8} started, log {LOGS / f'{name}.log'}")
    if "web" in names:
        url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
        if not wait_for_web(url, 60):
            print(f"the API did not answer at {url}; see {LOGS / 'web.log'}", file=sys.stderr)
            return 1
        print(f"API ready at {url}")
        where = "BATCHSVC_BOOTSTRAP_API_KEY" if os.environ.get("BATCHSVC_BOOTSTRAP_API_KEY") else BOOTSTRAP_KEY_FILE
        print(f"admin API key: {where} (make others with `batchsvc keys create`)")
    return 0


def down(names: list[str], everything: bool) -> int:
    if not supervisord_running():
        print("supervisord is not running")
        return 0
    server = rpc()
    for name in reversed(names):
        try:
            server.stopProcess(name, True)
            print(f"{name:8} stopped")
        except xmlrpc.client.Fault as fault:
            print(f"{name:8} {fault.faultString.lower().replace('_', ' ')}")
    if everything:
        # Every process first (the Procfile's and crashguard), waiting for each to end;
        # then supervisord itself, waiting for its pid to go.
        for result in server.stopAllProcesses(True):
            if result["status"] == 80:  # supervisor.xmlrpc.Faults.SUCCESS
                print(f"{result['name']:8} stopped")
        pid = int((RUN / "supervisord.pid").read_text())
        server.shutdown()
        deadline = time.monotonic() + STOP_WAIT_SECS
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        print("supervisord stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("names", nargs="*", help=f"processes (default: {' '.join(DEFAULT_PROCESSES)})")
    args = parser.parse_args()
    entries = procfile()
    names = args.names or [n for n in DEFAULT_PROCESSES if n in entries]
    unknown = [n for n in names if n not in entries]
    if unknown:
        parser.error(f"not in the Procfile: {', '.join(unknown)}")
    if args.action == "status":
        return status(names)
    if args.action == "down":
        return down(names, everything=not args.names)
    return up(names, entries)


if __name__ == "__main__":
    sys.exit(main())
