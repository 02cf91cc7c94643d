"""Backup and restore of the job state that lives in Redis: job records with
their progress and attempt counts, file records, API keys, tenants and the
indexes over them.

A backup is one point-in-time snapshot: every record is read inside one
MULTI/EXEC, so no job is caught half-way through an update. It is written to
storage as gzipped JSON (`layout.backup_key`), key by key with its type and TTL;
values are bytes, kept as latin-1 strings (a lossless mapping of bytes to text).
Leases, and supervisord's crash records, are not backed up: they describe
processes, not jobs.

A restore writes every key of a snapshot that is missing, leaving present ones
alone, so it is for an empty (or partly lost) Redis and safe to run twice. The
jobs come back with their status and counts; active ones are re-driven by the
sweeper (or `POST /v1/batch/{id}/retry`) like after any Redis loss.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from typing import Any

import orjson

from batchsvc.services import Services
from batchsvc.storage import layout

FORMAT = 1
# What describes processes, not jobs.
_SKIPPED = ("lease:", "leases", "supervisor:")


@dataclass(frozen=True)
class BackupInfo:
    key: str
    keys: int
    jobs: int
    created_at: float


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _bytes(value: str) -> bytes:
    return value.encode("latin-1")


_READ = {
    "string": lambda pipe, key: pipe.get(key),
    "hash": lambda pipe, key: pipe.hgetall(key),
    "set": lambda pipe, key: pipe.smembers(key),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
}


def _encode(kind: str, value: Any) -> Any:
    if kind == "string":
        return _text(value)
    if kind == "hash":
        return {_text(k): _text(v) for k, v in value.items()}
    if kind == "set":
        return sorted(_text(v) for v in value)
    if kind == "zset":
        return [[_text(member), score] for member, score in value]
    return [_text(v) for v in value]


def snapshot(svc: Services) -> dict[str, Any]:
    """Every record under the state prefix, read in one transaction."""
    client = svc.state_redis
    prefix = f"{svc.settings.redis_prefix}:"
    names = [
        name
        for name in client.scan_iter(match=f"{prefix}*", count=1000)
        if not name.decode("latin-1")[len(prefix) :].startswith(_SKIPPED)
    ]
    types = client.pipeline(transaction=False)
    for name in names:
        types.type(name)
    kinds = [k.decode() for k in types.execute()]
    read = client.pipeline(transaction=True)
    kept = [(n, k) for n, k in zip(names, kinds, strict=True) if k in _READ]
    for name, kind in kept:
        _READ[kind](read, name)
        read.pttl(name)
    replies = read.execute()
    records = []
    for (name, kind), value, ttl in zip(kept, replies[::2], replies[1::2], strict=True):
        if value in (None, {}, [], set()):
            continue  # gone between the scan and the transaction
        records.append({"key": _text(name)[len(prefix) :], "type": kind, "ttl_ms": ttl, "value": _encode(kind, value)})
    return {"format": FORMAT, "created_at": time.time(), "prefix": svc.settings.redis_prefix, "records": records}


def backup(svc: Services) -> BackupInfo:
    """Write a snapshot to storage; returns where, and what it holds."""
    data = snapshot(svc)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(data["created_at"]))
    key = layout.backup_key(stamp)
    svc.storage.put_bytes(key, gzip.compress(orjson.dumps(data)), "application/gzip")
    jobs = sum(1 for r in data["records"] if r["key"].startswith("job:") and r["key"].count(":") == 1)
    return BackupInfo(key, len(data["records"]), jobs, data["created_at"])


def latest_backup(svc: Services) -> str | None:
    keys = sorted(info.key for info in svc.storage.list(layout.BACKUPS_PREFIX))
    return keys[-1] if keys else None


@dataclass(frozen=True)
class RestoreInfo:
    key: str
    restored: int
    skipped: int  # present already: left alone
    jobs: int


def restore(svc: Services, key: str | None = None) -> RestoreInfo:
    """Write back every record of a backup (the latest unless `key`) that Redis lacks."""
    key = key or latest_backup(svc)
    if key is None:
        raise FileNotFoundError("no backup in storage")
    data = orjson.loads(gzip.decompress(svc.storage.get_bytes(key)))
    if data.get("format") != FORMAT:
        raise ValueError(f"{key}: backup format {data.get('format')!r}, expected {FORMAT}")
    client = svc.state_redis
    prefix = f"{svc.settings.redis_prefix}:"
    restored = skipped = jobs = 0
    for record in data["records"]:
        name = prefix + record["key"]
        if client.exists(name):
            skipped += 1
            continue
        pipe = client.pipeline(transaction=True)
        kind, value = record["type"], record["value"]
        if kind == "string":
            pipe.set(name, _bytes(value))
        elif kind == "hash":
            pipe.hset(name, mapping={_bytes(k): _bytes(v) for k, v in value.items()})
        elif kind == "set":
            pipe.sadd(name, *[_bytes(v) for v in value])
        elif kind == "zset":
            pipe.zadd(name, {_bytes(member): score for member, score in value})
        else:
            pipe.rpush(name, *[_bytes(v) for v in value])
        if record["ttl_ms"] > 0:
            pipe.pexpire(name, record["ttl_ms"])
        pipe.execute()
        restored += 1
        jobs += record["key"].startswith("job:") and record["key"].count(":") == 1
    return RestoreInfo(key, restored, skipped, jobs)
