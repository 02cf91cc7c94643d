"""Admin endpoints: API keys and tenant policies. Admin keys only; `batchsvc
keys ...` and `batchsvc tenants ...` are their command line."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from batchsvc.access import Role, check_tenant
from batchsvc.errors import ErrorType, ServiceError
from batchsvc.services import Services
from batchsvc.store.tenants import check_cidrs
from web.audit import audited
from web.auth import requires
from web.request import json_object
from web.schemas import CreateKeySchema, RotateSecretSchema, TenantPolicySchema

bp = Blueprint("admin", __name__, url_prefix="/v1")


def services() -> Services:
    return current_app.extensions["batchsvc"]


@bp.post("/keys")
@audited("key_create")
@requires(Role.ADMIN)
def create_key() -> tuple[Response, int]:
    args = CreateKeySchema().load(json_object())
    record, key = services().keys.create(args["tenant"], Role(args["role"]), args["name"])
    g.audit_target_key_id = record.id
    # The only time the key is ever shown.
    return jsonify({**record.public(), "key": key}), 201


@bp.get("/keys")
@requires(Role.ADMIN)
def list_keys() -> Response:
    tenant = request.args.get("tenant")
    records = services().keys.list(check_tenant(tenant) if tenant else None)
    return jsonify({"object": "list", "data": [r.public() for r in records]})


@bp.delete("/keys/<key_id>")
@audited("key_revoke")
@requires(Role.ADMIN)
def revoke_key(key_id: str) -> Response:
    g.audit_target_key_id = key_id
    return jsonify(services().keys.revoke(key_id).public())


@bp.get("/tenants/<tenant>")
@requires(Role.ADMIN)
def get_tenant(tenant: str) -> Response:
    svc = services()
    return jsonify(svc.tenants.get(check_tenant(tenant)).public(svc.settings))


@bp.patch("/tenants/<tenant>")
@audited("tenant_update")
@requires(Role.ADMIN)
def update_tenant(tenant: str) -> Response:
    """Set any of the tenant's limits and its client IP allowlist; null returns a
    field to the deployment default."""
    args = TenantPolicySchema().load(json_object())
    if args.get("ip_allowlist") is not None:
        args["ip_allowlist"] = check_cidrs(args["ip_allowlist"])
    svc = services()
    return jsonify(svc.tenants.update(check_tenant(tenant), **args).public(svc.settings))


@bp.post("/tenants/<tenant>/webhook_secret")
@audited("webhook_secret_rotate")
@requires(Role.ADMIN)
def rotate_webhook_secret(tenant: str) -> tuple[Response, int]:
    """A new signing secret for the tenant's webhooks (or the one given). The
    ones it replaces keep signing for webhook_secret_overlap_s."""
    args = RotateSecretSchema().load(json_object(optional=True))
    svc = services()
    try:
        secret, until = svc.tenants.rotate_webhook_secret(
            check_tenant(tenant),
            svc.settings.webhook_secret_overlap_s,
            args.get("secret"),
            inherited=svc.settings.webhook_secrets.split(),
        )
    except ValueError as exc:
        raise ServiceError(ErrorType.VALIDATION, str(exc), {"fields": {"secret": [str(exc)]}}) from None
    return jsonify({"tenant": tenant, "secret": secret, "previous_valid_until": int(until)}), 201
