"""Who is calling: the API key on every request, its role, its tenant, and the
per-key rate limit.

Every endpoint needs `Authorization: Bearer <key>` except the health checks and
the signed download links (the link's token is its own short-lived credential,
as with an S3 presigned URL). A key sees its own tenant's jobs and files; an id
of another tenant's answers exactly like an id that does not exist."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter

from batchsvc.access import Role
from batchsvc.errors import ErrorType, JobNotFound, ServiceError
from batchsvc.services import Services
from batchsvc.store.files import FileNotFound, FileRecord
from batchsvc.store.jobs import Job
from batchsvc.store.keys import ApiKey
from web import audit, openapi

# Endpoints anyone may call: liveness and readiness, the signed download links,
# and the API's own description (web/openapi.py).
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "v1.download"}) | openapi.PUBLIC_ENDPOINTS


def _services() -> Services:
    return current_app.extensions["batchsvc"]


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(
        ErrorType.UNAUTHORIZED,
        message,
        {"header": "Authorization"},
        headers={"WWW-Authenticate": 'Bearer realm="batchsvc"'},
    )


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def identify() -> None:
    """before_request, ahead of the rate limit: who is calling (g.key), or why the
    call is refused (g.refusal). It raises nothing yet, so that callers with a
    wrong key are counted too (per client address) before `enforce` refuses them."""
    g.refusal = None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    token = _bearer()
    if token is None:
        g.refusal = _unauthorized("an API key is required: send Authorization: Bearer <key>")
        return
    svc = _services()
    key = svc.keys.authenticate(token)
    if key is None:
        g.refusal = _unauthorized("the API key is not valid (unknown or revoked)")
        return
    g.tenant = key.tenant  # for the audit line, refused or not
    g.key_id = key.id
    if not svc.tenants.get(key.tenant).admits(request.remote_addr):
        # Not g.key: a barred address is counted per address, so it cannot spend the key's rate.
        g.refusal = ServiceError(
            ErrorType.FORBIDDEN,
            "this tenant does not accept requests from this address",
            {"client_ip": request.remote_addr},
        )
        return
    g.key = key


def enforce() -> None:
    """before_request, after the rate limit: answer a refused caller 401 or 403."""
    refusal: ServiceError | None = g.get("refusal")
    if refusal is not None:
        audit.write("authenticate", refusal.type.status)
        raise refusal


def current_key() -> ApiKey:
    return g.key


def requires(role: Role) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Refuse (403) keys whose role is below `role`; every key can read."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = current_key()
            if not key.role.allows(role):
                raise ServiceError(
                    ErrorType.FORBIDDEN,
                    f"this needs the {role.value} role; the key has {key.role.value}",
                    {"role": key.role.value, "required": role.value},
                )
            return view(*args, **kwargs)

        return wrapper

    return decorate


def visible_tenant() -> str | None:
    """The tenant whose objects this key lists: its own, or None (all) for an admin."""
    key = current_key()
    return None if key.role is Role.ADMIN else key.tenant


def _sees(tenant: str) -> bool:
    key = current_key()
    return key.role is Role.ADMIN or key.tenant == tenant


def visible_job(job_id: str) -> Job:
    """The job, if this key may see it; otherwise the same 404 as a missing id."""
    job = _services().jobs.get(job_id)
    if not _sees(job.tenant):
        raise JobNotFound(job_id)
    return job


def visible_file(file_id: str) -> FileRecord:
    record = _services().files.get(file_id)
    if not _sees(record.tenant):
        raise FileNotFound(file_id)
    return record


def _rate_key() -> str:
    """A bucket per accepted key; other callers share one per client address, an
    IPv6 client per /64 (one host is commonly given a whole /64 to pick from)."""
    key = getattr(g, "key", None)
    if key is not None:
        return f"key:{key.id}"
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return f"ip:{request.remote_addr}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def _rate_limit() -> str:
    svc = _services()
    key = getattr(g, "key", None)
    own = svc.tenants.get(key.tenant).rate_limit if key is not None else None
    return own or svc.settings.api_rate_limit


def _retry_after_only_when_refused(response: Response) -> Response:
    """Flask-Limiter sets Retry-After on every response, from the rate window; it means
    something on a 429 or 503 only, and an error that named its own (a quota's) keeps it."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    elif "retry_after" in g:
        response.headers["Retry-After"] = g.retry_after
    return response


def install(app: Flask) -> Limiter:
    """Identify every request's key, count the request against that key's rate
    limit (in Redis, so every web process shares the count), then refuse it if
    the key was missing, wrong or from a barred address. Order matters: the key
    must be known before the limiter picks the bucket."""
    svc: Services = app.extensions["batchsvc"]
    if svc.settings.bootstrap_api_key:
        svc.keys.ensure_bootstrap(svc.settings.bootstrap_api_key)
    app.before_request(identify)
    # Registered before the limiter, so it runs after the limiter's header hook.
    app.after_request(_retry_after_only_when_refused)
    limiter = Limiter(
        _rate_key,
        app=app,
        default_limits=[_rate_limit],
        storage_uri=svc.settings.ratelimit_storage_url,
        key_prefix=f"{svc.settings.redis_prefix}:ratelimit",
        headers_enabled=True,
        strategy="moving-window",
        swallow_errors=True,  # a Redis blip must not turn every request into a 500
        # Liveness and readiness only: /metrics needs a key, so wrong keys there count too.
        default_limits_exempt_when=lambda: request.endpoint in ("health.healthz", "health.readyz"),
    )
    app.before_request(enforce)  # after the limiter's check: refused callers are counted first
    return limiter
