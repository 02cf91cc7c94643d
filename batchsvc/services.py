"""The objects a process needs (job store, storage, model catalogue), built lazily
from one `Settings`. Nothing connects at import time, and each process (a Celery
prefork child, a gunicorn worker) builds its own clients after the fork."""

from __future__ import annotations

import os
import secrets
from functools import cached_property

import redis

from batchsvc.inference.models import ModelCatalog
from batchsvc.settings import Settings, get_settings
from batchsvc.storage.base import Storage
from batchsvc.storage.local import LocalStorage
from batchsvc.storage.s3 import S3Storage
from batchsvc.store.estimates import EstimateStore
from batchsvc.store.files import FileStore
from batchsvc.store.idempotency import IdempotencyStore
from batchsvc.store.jobs import JobStore
from batchsvc.store.keys import KeyStore
from batchsvc.store.leases import LeaseStore
from batchsvc.store.tenants import TenantStore
from batchsvc.store.workers import WorkerStore


def signing_key(settings: Settings) -> bytes:
    """The key of local download links. The web and the workers must share it:
    without one in the settings, the first process writes one next to the data
    (local storage is single-host by nature) and the others read it."""
    if settings.signing_secret:
        return settings.signing_secret.encode()
    path = settings.path(settings.storage_local_root) / ".signing-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_hex(32).encode())
    return path.read_bytes()


def make_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "local":
        root = settings.path(settings.storage_local_root)
        return LocalStorage(root, settings.public_base_url, signing_key(settings))
    if settings.storage_backend == "s3":
        return S3Storage(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            part_size=settings.s3_part_size_mb * 1024 * 1024,
            public_endpoint=settings.s3_public_endpoint,
            sse=settings.s3_sse,
        )
    raise ValueError(f"unknown storage_backend {settings.storage_backend!r} (expected 'local' or 's3')")


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def state_redis(self) -> redis.Redis:
        """One client (one connection pool) for every store of job state."""
        return redis.Redis.from_url(
            self.settings.state_redis_url, health_check_interval=30, socket_timeout=10, socket_connect_timeout=5
        )

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def estimates(self) -> EstimateStore:
        return EstimateStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def files(self) -> FileStore:
        return FileStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        return IdempotencyStore(self.state_redis, self.settings.redis_prefix, self.settings.idempotency_ttl_s)

    @cached_property
    def leases(self) -> LeaseStore:
        return LeaseStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def tenants(self) -> TenantStore:
        return TenantStore(self.state_redis, self.settings.redis_prefix)

    @cached_property
    def workers(self) -> WorkerStore:
        return WorkerStore(self.state_redis, self.settings.redis_prefix, ttl_s=3 * self.settings.worker_heartbeat_s)

    @cached_property
    def storage(self) -> Storage:
        return make_storage(self.settings)

    @cached_property
    def models(self) -> ModelCatalog:
        return ModelCatalog.from_settings(self.settings)


_current: tuple[int, Services] | None = None


def current_services() -> Services:
    """This process's services; rebuilt after a fork so no client crosses it."""
    global _current
    if _current is None or _current[0] != os.getpid():
        _current = (os.getpid(), Services(get_settings()))
    return _current[1]
