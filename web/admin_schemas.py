"""What the admin, fleet and backup views read and answer (web/admin_api.py,
web/fleet_api.py, web/backup_api.py), as marshmallow schemas, and the
blueprint class they are declared with.

The request bodies of keys and tenant policies are web/schemas.py's; what is
here adds the checks those views made in Python (a CIDR allowlist normalised, a
webhook secret that can sign, a model of the catalogue, a backup key under
its prefix) and describes every answer, key by key, as the views build it.
"""

from __future__ import annotations

import re
from typing import Any

from flask import current_app
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates

from batchsvc.access import ROLE_NAMES, TENANT_PATTERN, TENANT_RULE
from batchsvc.outbound import webhooks
from batchsvc.storage import layout
from batchsvc.storage.base import check_key
from batchsvc.store.tenants import check_cidrs
from batchsvc.store.workers import WorkerState
from web import openapi
from web.request import json_object
from web.schemas import RotateSecretSchema, TenantPolicySchema

# A JSON body the client may leave out: an empty body reads as {} (the schema's defaults).
OPTIONAL_JSON = "optional_json"


class AdminParser(openapi.ApiParser):
    __location_map__ = {**openapi.ApiParser.__location_map__, OPTIONAL_JSON: "load_optional_json"}

    def load_optional_json(self, req: Any, schema: Schema) -> Any:
        return json_object(optional=True)


class Blueprint(openapi.Blueprint):
    """web.openapi's Blueprint, whose views may also take `location=OPTIONAL_JSON`
    (documented as an application/json request body)."""

    ARGUMENTS_PARSER = AdminParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **openapi.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        OPTIONAL_JSON: "application/json",
    }


def tenant_path(description: str = "the tenant's name") -> list[dict[str, Any]]:
    """The <tenant> of a URL, documented with its rule (the view checks it: check_tenant)."""
    schema = {"type": "string", "pattern": TENANT_PATTERN}
    return [{"in": "path", "name": "tenant", "required": True, "schema": schema, "description": description}]


# --- keys ------------------------------------------------------------------------------


class KeyQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    # Only this tenant's keys; every tenant's by default.
    tenant = fields.String(validate=validate.Regexp(TENANT_PATTERN, error=TENANT_RULE))


class KeySchema(Schema):
    """An API key as the API shows it (ApiKey.public): never the key itself."""

    id = fields.String(required=True)
    tenant = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLE_NAMES))
    name = fields.String(required=True)
    hint = fields.String(required=True, metadata={"description": "the key's first characters"})
    created_at = fields.Integer(required=True)
    revoked_at = fields.Integer(required=True, allow_none=True)


class CreatedKeySchema(KeySchema):
    key = fields.String(required=True, metadata={"description": "the key: shown this once, never again"})


class KeyListSchema(Schema):
    object = fields.String(required=True, validate=validate.Equal("list"))
    data = fields.List(fields.Nested(KeySchema), required=True)


# --- tenants ---------------------------------------------------------------------------


class TenantUpdateSchema(TenantPolicySchema):
    """The allowlist's entries normalised to networks ('10.0.0.1/8' is 10.0.0.0/8);
    an entry that is not one is a 422 naming it."""

    @post_load
    def _networks(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("ip_allowlist") is not None:
            data["ip_allowlist"] = check_cidrs(data["ip_allowlist"])
        return data


class RotateSecretBodySchema(RotateSecretSchema):
    @validates("secret")
    def _signs(self, value: str, **_: Any) -> None:
        try:
            webhooks.sign(value, "msg_check", 0, b"")
        except ValueError as exc:  # its message never quotes the secret
            raise ValidationError(str(exc)) from None


class WebhookSecretDatesSchema(Schema):
    created_at = fields.Integer(required=True)
    retire_at = fields.Integer(required=True, allow_none=True, metadata={"description": "null: signs until rotated"})


class TenantSchema(Schema):
    """A tenant's effective limits (its own or the deployment's) and its secrets by date only."""

    tenant = fields.String(required=True)
    max_active_jobs = fields.Integer(required=True)
    max_queued_requests = fields.Integer(required=True)
    rate_limit = fields.String(required=True)
    ip_allowlist = fields.List(fields.String(), required=True, metadata={"description": "empty: any address"})
    webhook_secrets = fields.List(fields.Nested(WebhookSecretDatesSchema), required=True)


class RotatedSecretSchema(Schema):
    tenant = fields.String(required=True)
    secret = fields.String(required=True, metadata={"description": "the new signing secret: shown this once"})
    previous_valid_until = fields.Integer(
        required=True, metadata={"description": "when the secrets it replaces stop signing (epoch seconds)"}
    )


# --- models and workers ----------------------------------------------------------------


class ModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.Equal("model"))
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    live_workers = fields.List(
        fields.String(), required=True, metadata={"description": "the workers serving it now; empty: its jobs wait"}
    )


class ModelListSchema(Schema):
    object = fields.String(required=True, validate=validate.Equal("list"))
    data = fields.List(fields.Nested(ModelSchema), required=True)


WORKER_STATES = [value for name, value in vars(WorkerState).items() if name.isupper()]


class WorkerSchema(Schema):
    """A live LLM worker's record (batchsvc/store/workers.py: WorkerRecord)."""

    name = fields.String(required=True)
    queues = fields.List(fields.String())
    model = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(WORKER_STATES))
    current_shard = fields.String(allow_none=True, metadata={"description": "job_id/index"})
    devices = fields.String(allow_none=True)
    pid = fields.Integer(allow_none=True)
    engine_loaded_at = fields.Float(allow_none=True)
    engine_load_s = fields.Float(allow_none=True)
    swap_to = fields.String(allow_none=True)
    last_swap = fields.Dict(keys=fields.String(), allow_none=True, metadata={"description": "seconds per step"})
    shards_run = fields.Integer()
    seen_at = fields.Float()


class WorkerListSchema(Schema):
    object = fields.String(required=True, validate=validate.Equal("list"))
    data = fields.List(fields.Nested(WorkerSchema), required=True)


class CatalogueModel(fields.String):
    """An alias of the model catalogue (configs/models.yaml), read when the request
    comes; anything else, or nothing, is refused with the aliases to choose from."""

    def _aliases(self) -> list[str]:
        return current_app.extensions["batchsvc"].models.aliases()

    def make_error(self, key: str, **kwargs: Any) -> ValidationError:
        if key in ("required", "null", "invalid"):
            return ValidationError(f"one of: {', '.join(self._aliases())}")
        return super().make_error(key, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        alias = super()._deserialize(value, attr, data, **kwargs)
        aliases = self._aliases()
        if alias not in aliases:
            raise ValidationError(f"one of: {', '.join(aliases)} (not {alias[:200]!r})")
        return alias


class SwapSchema(Schema):
    class Meta:
        unknown = RAISE

    model = CatalogueModel(required=True, metadata={"description": "an alias of GET /v1/models"})


# --- backup ----------------------------------------------------------------------------


def _storage_key(key: str) -> None:
    try:
        check_key(key)
    except ValueError:
        raise ValidationError("not a key storage can hold") from None


class RestoreSchema(Schema):
    class Meta:
        unknown = RAISE

    backup = fields.String(
        load_default=None,
        allow_none=True,
        # One object right under the prefix, and a key storage accepts: a folder, an empty
        # segment or ".." would reach storage as a key it refuses (a 500, found by schemathesis).
        validate=[
            validate.Regexp(
                f"^{re.escape(layout.BACKUPS_PREFIX)}[^/]+$",
                error=f"not a backup key: one under {layout.BACKUPS_PREFIX} (as `admin backup` printed it)",
            ),
            _storage_key,
        ],
        metadata={"description": "the backup to restore; the latest by default"},
    )


class BackupSchema(Schema):
    key = fields.String(required=True, metadata={"description": "the backup's key in storage"})
    keys = fields.Integer(required=True, metadata={"description": "Redis records saved"})
    jobs = fields.Integer(required=True)
    created_at = fields.Float(required=True)


class RestoreResultSchema(Schema):
    key = fields.String(required=True)
    restored = fields.Integer(required=True)
    skipped = fields.Integer(required=True, metadata={"description": "present already: left alone"})
    jobs = fields.Integer(required=True, metadata={"description": "jobs among the records restored"})
