"""Tenants: each one's quotas, request rate, client IP allowlist and webhook secrets.

A tenant exists as soon as a key names it; until an admin sets something, it
runs on the deployment's defaults (the `tenant_*` settings).

Keys (under the settings' `redis_prefix`):
    {p}:tenant:{name}  hash, one JSON value per field of `TenantPolicy`
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from batchsvc.errors import ErrorType, ServiceError
from batchsvc.outbound import webhooks
from batchsvc.settings import Settings
from batchsvc.store.jobs import Job, JobStore

QUOTA_RETRY_AFTER_S = 60  # a quota frees up when a job ends: ask to come back in a minute


@dataclass
class TenantPolicy:
    name: str
    max_active_jobs: int | None = None  # None: the deployment default
    max_queued_requests: int | None = None
    rate_limit: str | None = None  # e.g. "600/minute"; Flask-Limiter's notation
    ip_allowlist: list[str] = field(default_factory=list)  # CIDRs; empty admits any address
    # Newest first: {"secret", "created_at", "retire_at"}; retire_at is set when a newer one replaces it.
    webhook_secrets: list[dict[str, Any]] = field(default_factory=list)

    def admits(self, address: str | None) -> bool:
        if not self.ip_allowlist:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in self.ip_allowlist)

    def live_secrets(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return [s["secret"] for s in self.webhook_secrets if s.get("retire_at") is None or s["retire_at"] > now]

    def public(self, settings: Settings) -> dict[str, Any]:
        """The policy as the API shows it: effective limits, and secrets by date only."""
        return {
            "tenant": self.name,
            "max_active_jobs": max_active_jobs(self, settings),
            "max_queued_requests": self.max_queued_requests or settings.tenant_max_queued_requests,
            "rate_limit": self.rate_limit or settings.api_rate_limit,
            "ip_allowlist": self.ip_allowlist,
            "webhook_secrets": [
                {"created_at": int(s["created_at"]), "retire_at": s.get("retire_at") and int(s["retire_at"])}
                for s in self.webhook_secrets
            ],
        }


def check_cidrs(values: list[str]) -> list[str]:
    """Normalised CIDRs; a bad one is a validation error naming it."""
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ServiceError(
                ErrorType.VALIDATION,
                f"{value!r} is not an IP address or CIDR",
                {"fields": {"ip_allowlist": [f"not an address or CIDR: {value!r}"]}},
            ) from None
    return networks


class TenantStore:
    def __init__(self, client: redis.Redis, prefix: str = "batchsvc"):
        self.redis: Any = client
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    def get(self, name: str) -> TenantPolicy:
        raw = self.redis.hgetall(self._key(name))
        names = {f.name for f in dataclasses.fields(TenantPolicy)}
        values = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in names}
        return TenantPolicy(**{**values, "name": name})

    def update(self, name: str, **fields: Any) -> TenantPolicy:
        """Set policy fields; a None value returns that field to the default."""
        known = {f.name for f in dataclasses.fields(TenantPolicy)} - {"name", "webhook_secrets"}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown tenant fields: {sorted(unknown)}")
        pipe = self.redis.pipeline()
        for key, value in fields.items():
            if value is None:
                pipe.hdel(self._key(name), key)
            else:
                pipe.hset(self._key(name), key, orjson.dumps(value))
        pipe.execute()
        return self.get(name)

    def rotate_webhook_secret(
        self, name: str, overlap_s: float, secret: str | None = None, inherited: Sequence[str] = ()
    ) -> tuple[str, float]:
        """Make `secret` (or a new one) the tenant's signing secret. The ones it
        replaces keep signing until now + overlap_s, so receivers holding either
        verify during the switch. On a tenant's first rotation, those are the
        deployment's secrets it was signed with until now (`inherited`).
        Returns the secret and that moment."""
        secret = secret or webhooks.new_secret()
        webhooks.sign(secret, "msg_check", 0, b"")  # refuses a malformed secret, without echoing it
        now = time.time()
        until = now + overlap_s
        with self.redis.pipeline() as pipe:  # a rotation racing another must not lose either
            while True:
                try:
                    pipe.watch(self._key(name))
                    policy = self.get(name)
                    current = [s for s in policy.webhook_secrets if s.get("retire_at") is None or s["retire_at"] > now]
                    if not current:
                        current = [{"secret": s, "created_at": now, "retire_at": None} for s in inherited]
                    kept = [{**s, "retire_at": min(s.get("retire_at") or until, until)} for s in current]
                    secrets = [{"secret": secret, "created_at": now, "retire_at": None}, *kept]
                    pipe.multi()
                    pipe.hset(self._key(name), "webhook_secrets", orjson.dumps(secrets))
                    pipe.execute()
                    return secret, until
                except redis.WatchError:
                    continue


def webhook_secrets(policy: TenantPolicy, settings: Settings) -> list[str]:
    """The secrets a tenant's webhooks are signed with, newest first: its own, or
    (a single-tenant deployment) the deployment's `webhook_secrets`."""
    return policy.live_secrets() or settings.webhook_secrets.split()


def _quota_error(message: str, limit: str, maximum: int, current: int) -> ServiceError:
    return ServiceError(
        ErrorType.RATE_LIMITED,
        message,
        {"quota": limit, "max": maximum, "current": current, "retry_after": QUOTA_RETRY_AFTER_S},
        headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
    )


def queued_requests(jobs: JobStore, active: list[Job]) -> int:
    """Requests of these jobs not answered yet: validated requests, or else the
    lines counted at submit (a fetched file counts 0 until it is read)."""
    total = (job.total if job.total is not None else job.submitted_lines or 0 for job in active)
    return sum(max(0, size - jobs.counts(job.id).done) for job, size in zip(active, total, strict=True))


def max_active_jobs(policy: TenantPolicy, settings: Settings) -> int:
    return policy.max_active_jobs or settings.tenant_max_active_jobs


def check_quota(policy: TenantPolicy, settings: Settings, jobs: JobStore, new_requests: int) -> None:
    """Refuse (429) a new job of `new_requests` lines that would take the tenant
    past its active-job or queued-request quota."""
    limit = max_active_jobs(policy, settings)
    active = jobs.active_jobs(policy.name)
    if len(active) >= limit:
        raise active_jobs_error(policy.name, limit)
    check_queued_requests(policy, settings, jobs, active, new_requests)


def active_jobs_error(tenant: str, limit: int) -> ServiceError:
    return _quota_error(f"tenant {tenant!r} has {limit} active jobs, its quota", "max_active_jobs", limit, limit)


def check_queued_requests(
    policy: TenantPolicy, settings: Settings, jobs: JobStore, active: list[Job], new_requests: int
) -> None:
    limit = policy.max_queued_requests or settings.tenant_max_queued_requests
    queued = queued_requests(jobs, active)
    if queued + new_requests > limit:
        raise _quota_error(
            f"tenant {policy.name!r} has {queued} requests queued; {new_requests} more would pass its quota of {limit}",
            "max_queued_requests",
            limit,
            queued,
        )
