"""Request and response schemas of the /v1 API (marshmallow)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate

from batchsvc import bounded_json
from batchsvc.access import ROLE_NAMES, TENANT_PATTERN, TENANT_RULE
from batchsvc.pipeline.submit import WINDOW_PATTERN
from batchsvc.store.jobs import PRIORITY_WORDS, parse_priority

# A completion window's shape; its length is bounded by submit_job (max_completion_window_s).
WINDOW = validate.Regexp(WINDOW_PATTERN, error="a number and a unit: s, m, h or d (e.g. '24h')")

PRIORITY_HELP = f"an integer 0-9 (higher runs sooner) or one of: {', '.join(PRIORITY_WORDS)}"


class Priority(fields.Field):
    """A job priority as the client wrote it: 0-9 or a word (batchsvc.store.jobs)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if parse_priority(value) is None:
            raise ValidationError(PRIORITY_HELP)
        return value


class JobMetadataSchema(Schema):
    class Meta:
        unknown = RAISE

    job_name = fields.String(validate=validate.Length(max=200))
    # Higher runs sooner, among jobs waiting for the same GPU workers.
    priority = Priority(load_default=5)


class SubmitBatchSchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1, max=200))
    # Scheme, host and address are checked by batchsvc/outbound/netguard.py at submit, which
    # names the rule a URL breaks (marshmallow's URL check would only say "not valid").
    input_file_url = fields.String(validate=validate.Length(min=1, max=2048))
    webhook_url = fields.String(validate=validate.Length(min=1, max=2048))
    metadata = fields.Nested(JobMetadataSchema, load_default=dict)
    # When unanswered requests expire (finished ones are kept), e.g. "24h"; none by default.
    completion_window = fields.String(validate=WINDOW)
    # Answer requests identical to those of earlier jobs from their results (batchsvc/pipeline/reuse.py).
    reuse = fields.String(validate=validate.OneOf(["latest"]))
    reuse_from = fields.List(fields.String(validate=validate.Length(max=64)), validate=validate.Length(max=20))
    force = fields.Boolean(load_default=False)  # reuse nothing
    # Validate, count tokens and reuse, estimate time and cost; run and keep nothing.
    dry_run = fields.Boolean(load_default=False)


class SubmitBatchFormSchema(SubmitBatchSchema):
    """The multipart variant: the JSONL comes as the `file` part, and metadata,
    if any, as a JSON-encoded form field."""

    class Meta:
        unknown = EXCLUDE  # the form also carries the file part's name

    @pre_load
    def _decode_metadata(self, data: Any, **_: Any) -> Any:
        data = dict(data)
        raw = data.get("metadata")
        if isinstance(raw, str):
            try:
                data["metadata"] = bounded_json.loads(raw) if raw.strip() else {}
            except bounded_json.JSONRefused as exc:
                raise ValidationError({"metadata": [f"must be a JSON object ({exc})"]}) from None
        if isinstance(data.get("reuse_from"), str):  # a form field: ids separated by commas
            data["reuse_from"] = [i.strip() for i in data["reuse_from"].split(",") if i.strip()]
        return data


class PageSchema(Schema):
    """One page of a newest-first list: `limit` items after the id `after`."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    after = fields.String(load_default=None)


# --- admin ---------------------------------------------------------------------------

_TENANT = validate.Regexp(TENANT_PATTERN, error=TENANT_RULE)


class CreateKeySchema(Schema):
    class Meta:
        unknown = RAISE

    tenant = fields.String(required=True, validate=_TENANT)
    role = fields.String(required=True, validate=validate.OneOf(ROLE_NAMES))
    name = fields.String(load_default="", validate=validate.Length(max=200))


class TenantPolicySchema(Schema):
    class Meta:
        unknown = RAISE

    # Bounded so a stored policy always fits the job store's 64-bit integers.
    max_active_jobs = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=1_000_000))
    max_queued_requests = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=10**12))
    rate_limit = fields.String(
        allow_none=True, validate=[validate.Length(max=200), lambda value: _check_rate_limit(value)]
    )
    ip_allowlist = fields.List(
        fields.String(validate=validate.Length(max=64)), allow_none=True, validate=validate.Length(max=1000)
    )


def _check_rate_limit(value: str) -> None:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValidationError("a rate limit like '600/minute' or '10 per second'") from None


class RotateSecretSchema(Schema):
    class Meta:
        unknown = RAISE

    secret = fields.String(validate=validate.Length(min=10, max=200))
