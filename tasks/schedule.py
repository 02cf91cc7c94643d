"""Celery beat entries, read from `configs/schedule.yaml`.

Each entry of `rescoring:` resubmits an input file on a cron schedule (Aris's
nightly rescoring), or `every: N` seconds, through the same submit path as the
API (batchsvc/pipeline/campaigns.py)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from celery.schedules import crontab, schedstate, schedule

from batchsvc.settings import Settings
from tasks.names import BACKUP, LEASES, RESCORE, RETENTION, SWEEP


def _crontab(expr: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


class every(schedule):
    """Every `run_every`, at the multiples of it since the epoch (as cron keeps to
    the clock), so that every beat process fires at the same instants."""

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.maybe_make_aware(self.now()).timestamp()
        period = self.run_every.total_seconds()
        slot = math.floor(now / period) * period
        due = self.maybe_make_aware(last_run_at).timestamp() < slot
        return schedstate(is_due=due, next=slot + period - now)


def _schedule_of(entry: dict[str, Any]) -> schedule:
    return every(float(entry["every"])) if "every" in entry else _crontab(entry["cron"])


def scheduled_slot(entry: dict[str, Any], now: float | None = None) -> float:
    """The scheduled time (unix seconds) of the entry's latest tick at or before `now`:
    what names a run, whichever beat sent it and however late it runs."""
    now = time.time() if now is None else now
    if "every" in entry:
        period = float(entry["every"])
        return math.floor(now / period) * period
    cron = _crontab(entry["cron"])
    moment = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0)
    for _ in range(366 * 24 * 60):
        dow = moment.isoweekday() % 7
        if (
            moment.minute in cron.minute
            and moment.hour in cron.hour
            and dow in cron.day_of_week
            and moment.day in cron.day_of_month
            and moment.month in cron.month_of_year
        ):
            return moment.timestamp()
        moment -= timedelta(minutes=1)
    raise ValueError(f"cron {entry['cron']!r} matches no minute in a year")


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "sweep": {
            "task": SWEEP,
            "schedule": float(settings.sweep_interval_s),
            "options": {"queue": settings.cpu_queue, "expires": settings.sweep_interval_s},
        },
        # First in its queue (priority 0), so a busy cpu worker delays it least.
        "leases": {
            "task": LEASES,
            "schedule": float(settings.lease_check_interval_s),
            "options": {"queue": settings.cpu_queue, "expires": settings.lease_check_interval_s, "priority": 0},
        },
        "backup": {
            "task": BACKUP,
            "schedule": float(settings.backup_interval_s),
            "options": {"queue": settings.cpu_queue, "expires": settings.backup_interval_s},
        },
        "retention": {
            "task": RETENTION,
            "schedule": float(settings.retention_interval_s),
            "options": {"queue": settings.cpu_queue, "expires": settings.retention_interval_s},
        },
    }
    path = settings.path(settings.schedule_file)
    if not path.exists():
        return schedule
    data = yaml.safe_load(path.read_text()) or {}
    for entry in data.get("rescoring") or []:
        if not entry.get("enabled", True):
            continue
        schedule[f"rescore:{entry['name']}"] = {
            "task": RESCORE,
            "schedule": _schedule_of(entry),
            "args": (entry["name"],),
            "options": {"queue": settings.cpu_queue},
        }
    return schedule


def rescoring_entry(settings: Settings, name: str) -> dict[str, Any]:
    data = yaml.safe_load(settings.path(settings.schedule_file).read_text()) or {}
    for entry in data.get("rescoring") or []:
        if entry["name"] == name:
            return entry
    raise KeyError(f"no rescoring entry named {name!r} in {settings.schedule_file}")
