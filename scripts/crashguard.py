"""A supervisord event listener that stops a process caught in a crash loop.

supervisord restarts a process that exits unexpectedly, at once, for ever (and
one that dies before `startsecs`, with a growing backoff, `startretries` times,
then marks it FATAL). This listener counts unexpected exits: after
`--max-crashes` within `--window-s` it stops the process and records that it
gave up, so that one broken worker does not restart in a loop while looking
alive. A FATAL process is recorded the same way.

Where it says so:
  - its log (var/log/crashguard.log under `make up`): one line per crash and per give-up;
  - Redis, hash `<redis_prefix>:supervisor:gave_up` in the job-state database:
    program -> {"crashes", "window_s", "at", "reason"} (read by `make status`,
    and the place for a metric to scrape);
  - `make status`, which shows the process stopped or FATAL with the reason.
A process that runs again (after `make up`) has its record and count cleared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import xmlrpc.client
from collections import defaultdict, deque

import redis
from supervisor import childutils

from batchsvc.settings import get_settings

log = logging.getLogger("crashguard")


def gave_up_key() -> str:
    return f"{get_settings().redis_prefix}:supervisor:gave_up"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().state_redis_url, socket_timeout=5, socket_connect_timeout=5)


def record(program: str, entry: dict | None) -> None:
    try:
        if entry is None:
            _redis().hdel(gave_up_key(), program)
        else:
            _redis().hset(gave_up_key(), program, json.dumps(entry))
    except redis.RedisError as err:
        log.error("could not record %s in Redis: %s", program, err)


class Guard:
    def __init__(self, max_crashes: int, window_s: float, stop: object):
        self.max_crashes = max_crashes
        self.window_s = window_s
        self.stop = stop  # callable(program): stop it in supervisord
        self.crashes: dict[str, deque[float]] = defaultdict(deque)
        self.given_up: set[str] = set()

    def exited(self, program: str, expected: bool, now: float) -> None:
        if expected or program in self.given_up:
            return
        times = self.crashes[program]
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        log.warning("%s exited unexpectedly (%d in the last %.0fs)", program, len(times), self.window_s)
        if len(times) >= self.max_crashes:
            self.given_up.add(program)
            log.error(
                "%s crashed %d times in %.0fs: stopped; fix it, then `make up`", program, len(times), self.window_s
            )
            self.stop(program)  # type: ignore[operator]
            reason = f"crashed {len(times)} times in {self.window_s:.0f}s"
            record(program, {"crashes": len(times), "window_s": self.window_s, "at": now, "reason": reason})

    def fatal(self, program: str, now: float) -> None:
        self.given_up.add(program)
        log.error("%s could not start (supervisord gave up: FATAL); fix it, then `make up`", program)
        reason = "could not stay up for startsecs (FATAL)"
        record(program, {"crashes": len(self.crashes[program]), "window_s": self.window_s, "at": now, "reason": reason})

    def running(self, program: str) -> None:
        if program in self.given_up:
            self.given_up.discard(program)
            self.crashes.pop(program, None)
            record(program, None)
            log.info("%s runs again", program)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-crashes", type=int, required=True)
    parser.add_argument("--window-s", type=float, required=True)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s crashguard %(message)s")
    rpc = childutils.getRPCInterface(os.environ)

    def stop(program: str) -> None:
        try:
            rpc.supervisor.stopProcess(program, False)
        except xmlrpc.client.Fault as fault:
            log.warning("could not stop %s: %s", program, fault.faultString)

    guard = Guard(args.max_crashes, args.window_s, stop)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        event = headers["eventname"]
        body = dict(token.split(":", 1) for token in payload.split())
        program = body.get("processname", "")
        now = time.time()
        if event == "PROCESS_STATE_EXITED":
            guard.exited(program, body.get("expected") == "1", now)
        elif event == "PROCESS_STATE_FATAL":
            guard.fatal(program, now)
        elif event == "PROCESS_STATE_RUNNING":
            guard.running(program)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
