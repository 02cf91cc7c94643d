"""API keys: who is calling, for which tenant, with which role.

A key is `bsk_` and 256 random bits. It is shown once, when it is made; the
store keeps only its SHA-256 (a key has far too much entropy for a slow hash
to matter), so a dump of Redis gives no usable key.

Keys (all under the settings' `redis_prefix`):
    {p}:apikey:{key_id}       hash: the `ApiKey` fields (no key, only its digest)
    {p}:apikey_by_digest:{h}  key id of the key whose SHA-256 is h
    {p}:apikeys               sorted set, key id scored by created_at
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from batchsvc.access import DEFAULT_TENANT, Role, check_tenant
from batchsvc.errors import ErrorType, ServiceError

log = logging.getLogger(__name__)

KEY_PREFIX = "bsk_"
BOOTSTRAP_KEY_ID = "key_bootstrap"
_MIN_BOOTSTRAP_CHARS = 24


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ApiKey:
    id: str
    tenant: str
    role: Role
    name: str = ""
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None
    hint: str = ""  # the first characters, so a person can tell their keys apart
    digest: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """What the API shows of a key: everything but its digest."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "role": self.role.value,
            "name": self.name,
            "hint": self.hint,
            "created_at": int(self.created_at),
            "revoked_at": None if self.revoked_at is None else int(self.revoked_at),
        }


class KeyNotFound(ServiceError):
    def __init__(self, key_id: str):
        super().__init__(ErrorType.NOT_FOUND, f"no API key with id {key_id!r}", {"key_id": key_id})


class KeyStore:
    def __init__(self, client: redis.Redis, prefix: str = "batchsvc"):
        self.redis: Any = client
        self.prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    def _by_digest(self, value: str) -> str:
        return f"{self.prefix}:apikey_by_digest:{value}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:apikeys"

    def _save(self, record: ApiKey) -> None:
        fields = {f.name: orjson.dumps(getattr(record, f.name)) for f in dataclasses.fields(record)}
        pipe = self.redis.pipeline()
        pipe.hset(self._key(record.id), mapping=fields)
        pipe.set(self._by_digest(record.digest), record.id)
        pipe.zadd(self._index, {record.id: record.created_at})
        pipe.execute()

    def create(self, tenant: str, role: Role, name: str = "") -> tuple[ApiKey, str]:
        """A new key; returns its record and the key itself, which nothing keeps."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            tenant=check_tenant(tenant),
            role=role,
            name=name,
            hint=key[:8],
            digest=digest(key),
        )
        self._save(record)
        return record, key

    def ensure_bootstrap(self, key: str) -> ApiKey:
        """Install the operator's bootstrap admin key (BATCHSVC_BOOTSTRAP_API_KEY) for
        the default tenant. Idempotent; a changed value replaces the old one. A
        value that was revoked stays revoked: starting with it again does not
        bring it back."""
        if len(key) < _MIN_BOOTSTRAP_CHARS:
            raise ValueError(f"the bootstrap API key must be at least {_MIN_BOOTSTRAP_CHARS} characters")
        value = digest(key)
        try:
            old = self.get(BOOTSTRAP_KEY_ID)
        except KeyNotFound:
            old = None
        if old is not None and old.digest == value:
            if not old.active:
                log.warning("BATCHSVC_BOOTSTRAP_API_KEY was revoked; it stays revoked (set a new value to replace it)")
            return old
        if old is not None:
            self.redis.delete(self._by_digest(old.digest))
        record = ApiKey(
            id=BOOTSTRAP_KEY_ID,
            tenant=DEFAULT_TENANT,
            role=Role.ADMIN,
            name="bootstrap (BATCHSVC_BOOTSTRAP_API_KEY)",
            hint=key[:4],
            digest=value,
        )
        self._save(record)
        return record

    def get(self, key_id: str) -> ApiKey:
        raw = self.redis.hgetall(self._key(key_id))
        if not raw:
            raise KeyNotFound(key_id)
        names = {f.name for f in dataclasses.fields(ApiKey)}
        values = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in names}
        values["role"] = Role(values["role"])
        return ApiKey(**values)

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key record of `key`, or None."""
        key_id = self.redis.get(self._by_digest(digest(key)))
        if key_id is None:
            return None
        try:
            record = self.get(key_id.decode())
        except KeyNotFound:
            return None
        return record if record.active and secrets.compare_digest(record.digest, digest(key)) else None

    def revoke(self, key_id: str) -> ApiKey:
        record = self.get(key_id)
        if record.active:
            record.revoked_at = time.time()
            pipe = self.redis.pipeline()
            pipe.hset(self._key(key_id), "revoked_at", orjson.dumps(record.revoked_at))
            pipe.delete(self._by_digest(record.digest))
            pipe.execute()
        return record

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys, newest first; only `tenant`'s when given."""
        records = []
        for key_id in self.redis.zrevrange(self._index, 0, -1):
            try:
                record = self.get(key_id.decode())
            except KeyNotFound:
                continue
            if tenant is None or record.tenant == tenant:
                records.append(record)
        return records
