"""Admin endpoints: API keys and tenant policies. Admin keys only; `batchsvc
keys ...` and `batchsvc tenants ...` are their command line.

The role check and the audit line come before the body is read: a key that may
not call an endpoint is refused (403) whatever it sent."""

from __future__ import annotations

from typing import Any

from flask import current_app, g

from batchsvc.access import Role, check_tenant
from batchsvc.services import Services
from web.admin_schemas import (
    OPTIONAL_JSON,
    Blueprint,
    CreatedKeySchema,
    KeyListSchema,
    KeyQuerySchema,
    KeySchema,
    RotatedSecretSchema,
    RotateSecretBodySchema,
    TenantSchema,
    TenantUpdateSchema,
    tenant_path,
)
from web.audit import audited
from web.auth import requires
from web.schemas import CreateKeySchema

bp = Blueprint("admin", __name__, url_prefix="/v1", description="API keys and tenant policies (admin keys)")


def services() -> Services:
    return current_app.extensions["batchsvc"]


@bp.post("/keys")
@audited("key_create")
@requires(Role.ADMIN)
@bp.arguments(CreateKeySchema)
@bp.response(201, CreatedKeySchema)
def create_key(args: dict[str, Any]) -> dict[str, Any]:
    """A new API key of a tenant, with a role. The answer is the only time the key is shown."""
    record, key = services().keys.create(args["tenant"], Role(args["role"]), args["name"])
    g.audit_target_key_id = record.id
    return {**record.public(), "key": key}


@bp.get("/keys")
@requires(Role.ADMIN)
@bp.arguments(KeyQuerySchema, location="query")
@bp.response(200, KeyListSchema)
def list_keys(args: dict[str, Any]) -> dict[str, Any]:
    """Every key (revoked ones too), or one tenant's; never the keys themselves."""
    records = services().keys.list(args.get("tenant"))
    return {"object": "list", "data": [r.public() for r in records]}


@bp.delete("/keys/<key_id>")
@audited("key_revoke")
@requires(Role.ADMIN)
@bp.response(200, KeySchema)
@bp.error(404, "no key with this id")
def revoke_key(key_id: str) -> dict[str, Any]:
    """Revoke a key: refused from the next request on."""
    g.audit_target_key_id = key_id
    return services().keys.revoke(key_id).public()


@bp.get("/tenants/<tenant>", parameters=tenant_path())
@requires(Role.ADMIN)
@bp.response(200, TenantSchema)
@bp.error(422, "not a tenant name")
def get_tenant(tenant: str) -> dict[str, Any]:
    """The tenant's effective limits, allowlist and webhook secrets (by date only)."""
    svc = services()
    return svc.tenants.get(check_tenant(tenant)).public(svc.settings)


@bp.patch("/tenants/<tenant>", parameters=tenant_path())
@audited("tenant_update")
@requires(Role.ADMIN)
@bp.arguments(TenantUpdateSchema)
@bp.response(200, TenantSchema)
def update_tenant(args: dict[str, Any], tenant: str) -> dict[str, Any]:
    """Set any of the tenant's limits and its client IP allowlist; null returns a
    field to the deployment default."""
    svc = services()
    return svc.tenants.update(check_tenant(tenant), **args).public(svc.settings)


@bp.post("/tenants/<tenant>/webhook_secret", parameters=tenant_path())
@audited("webhook_secret_rotate")
@requires(Role.ADMIN)
@bp.arguments(RotateSecretBodySchema, location=OPTIONAL_JSON, required=False)
@bp.response(201, RotatedSecretSchema)
def rotate_webhook_secret(args: dict[str, Any], tenant: str) -> dict[str, Any]:
    """A new signing secret for the tenant's webhooks (or the one given). The
    ones it replaces keep signing for webhook_secret_overlap_s. The answer is the
    only time the secret is shown."""
    svc = services()
    secret, until = svc.tenants.rotate_webhook_secret(
        check_tenant(tenant),
        svc.settings.webhook_secret_overlap_s,
        args.get("secret"),
        inherited=svc.settings.webhook_secrets.split(),
    )
    return {"tenant": tenant, "secret": secret, "previous_valid_until": int(until)}
