"""Celery beat entries, read from `configs/schedule.yaml`.

Each entry of `rescoring:` resubmits an input file on a cron schedule (Aris's
nightly rescoring) through the same submit path as the API."""

from __future__ import annotations

from typing import Any

import yaml
from celery.schedules import crontab

from batchsvc.settings import Settings
from tasks.names import RESCORE, RETENTION, SWEEP


def _crontab(expr: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "sweep": {
            "task": SWEEP,
            "schedule": float(settings.sweep_interval_s),
            "options": {"queue": settings.cpu_queue, "expires": settings.sweep_interval_s},
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
            "schedule": _crontab(entry["cron"]),
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
