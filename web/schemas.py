"""Request and response schemas of the /v1 API (marshmallow)."""

from __future__ import annotations

from typing import Any

from flask_smorest.fields import Upload
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema
from werkzeug.datastructures import FileStorage

from batchsvc import bounded_json
from batchsvc.access import ROLE_NAMES, TENANT_PATTERN, TENANT_RULE
from batchsvc.pipeline.submit import WINDOW_PATTERN
from batchsvc.store.jobs import PRIORITY_WORDS, JobStatus, parse_priority

# A completion window's shape; its length is bounded by submit_job (max_completion_window_s).
WINDOW = validate.Regexp(WINDOW_PATTERN, error="a number and a unit: s, m, h or d (e.g. '24h')")

_TENANT = validate.Regexp(TENANT_PATTERN, error=TENANT_RULE)

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


class _SubmitFields(Schema):
    """What a submission says besides where its JSONL is."""

    model = fields.String(required=True, validate=validate.Length(min=1, max=200))
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


class SubmitBatchSchema(_SubmitFields):
    """A submission as application/json: the JSONL is fetched from input_file_url."""

    class Meta:
        unknown = RAISE

    # Scheme, host and address are checked by batchsvc/outbound/netguard.py at submit, which
    # names the rule a URL breaks (marshmallow's URL check would only say "not valid").
    input_file_url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2048),
        error_messages={"required": "Missing data for required field (or upload the file as multipart/form-data)."},
    )


class FilePart(Upload):
    """A multipart file part (werkzeug's FileStorage), not a form field of the same name."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, FileStorage):
            raise ValidationError("must be a file part (the JSONL), not a form field")
        return value


_NO_FILE = "Missing data for required field: multipart submissions need the JSONL in a 'file' part."


class SubmitBatchFormSchema(_SubmitFields):
    """A submission as multipart/form-data: the JSONL comes as the `file` part,
    and metadata, if any, as a JSON-encoded form field."""

    class Meta:
        unknown = EXCLUDE  # other form fields are ignored (input_file_url is refused: _not_both)

    file = FilePart(
        required=True,
        metadata={"description": "the JSONL of requests"},
        error_messages={"required": _NO_FILE},
    )

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

    @validates_schema(pass_original=True)
    def _not_both(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        # Not a field of this schema (unknown fields are excluded here): named so it is not dropped unseen.
        if "input_file_url" in original:
            raise ValidationError("give either a file or input_file_url, not both", "input_file_url")


class PageSchema(Schema):
    """One page of a newest-first list: `limit` items after the id `after`."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    after = fields.String(load_default=None)


# Query strings of the /v1 views: a misspelt parameter or value is a 422 naming it.


class ResultsQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    # Also answer while the job runs, with links to the lines finished so far.
    partial = fields.Boolean(load_default=False)


class PartialQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    kind = fields.String(load_default="results", validate=validate.OneOf(["results", "errors"]))


RETRY_SCOPES = ("job", "failed_requests")


class RetryQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    # job: re-drive what the job is missing (lost shards, a lost finalize);
    # failed_requests: a new job of only the failed requests of a finished one.
    scope = fields.String(load_default="job", validate=validate.OneOf(RETRY_SCOPES))
    # An admin's: whose job it is, when Redis lost it and storage still knows it.
    tenant = fields.String(validate=_TENANT)


# The largest unix time a timestamp of the API can show (9999-12-31T23:59:59Z).
MAX_UNIX_SECONDS = 253_402_300_799


class CostsQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    # Jobs created at or after this unix time; none (or empty): all of them.
    since = fields.Float(
        load_default=None,
        validate=validate.Range(min=0, max=MAX_UNIX_SECONDS),
        error_messages={"invalid": "must be unix seconds (a number)"},
    )

    @pre_load
    def _empty_is_none(self, data: Any, **_: Any) -> Any:
        if data.get("since") == "":
            data = {k: v for k, v in data.items() if k != "since"}
        return data


# --- /v1 responses: what the views answer, key for key ------------------------------


class Number(fields.Raw):
    """A JSON number written as the core computed it (fields.Float would write
    the int 0 as 0.0); documented as a number."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"type": "number", **kwargs.pop("metadata", {})}, **kwargs)


def _timestamp(**kwargs: Any) -> fields.String:
    """An ISO 8601 UTC time (web.api.iso)."""
    return fields.String(metadata={"format": "date-time"}, **kwargs)


_JOB_STATUS = validate.OneOf([s.value for s in JobStatus])


class JobCreatedSchema(Schema):
    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=_JOB_STATUS)
    created_at = _timestamp(required=True)
    # Known when the upload's lines were counted; a URL's only after the fetch.
    estimated_completion = _timestamp(required=True, allow_none=True)


class JobProgressSchema(Schema):
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    total = fields.Integer(required=True, allow_none=True)  # known after validation (or at upload)
    percent = fields.Float(required=True)


class JobThroughputSchema(Schema):
    req_per_sec = fields.Float(required=True, allow_none=True)
    tokens_per_sec = fields.Float(required=True, allow_none=True)
    estimated_remaining = Number(required=True, allow_none=True, metadata={"description": "seconds"})


class JobUsageSchema(Schema):
    input_tokens = fields.Integer(required=True)
    cached_tokens = fields.Integer(required=True)
    output_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class BatchJobSchema(Schema):
    """A job as GET /v1/batch/{id} shows it."""

    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=_JOB_STATUS)
    model = fields.String(required=True)
    progress = fields.Nested(JobProgressSchema, required=True)
    throughput = fields.Nested(JobThroughputSchema, required=True)
    created_at = _timestamp(required=True)
    started_at = _timestamp(required=True, allow_none=True)
    finished_at = _timestamp(required=True, allow_none=True)
    estimated_completion = _timestamp(required=True, allow_none=True)
    expires_at = _timestamp(required=True, allow_none=True)
    metadata = fields.Dict(required=True)
    usage = fields.Nested(JobUsageSchema, required=True)
    reused = fields.Integer(required=True)  # requests answered from earlier jobs' results
    engine_seconds = Number(required=True, allow_none=True)
    cost = Number(required=True, allow_none=True)
    reuse_from = fields.List(fields.String(), required=True)
    reproducibility = fields.Dict(required=True, allow_none=True)  # what it ran on, once prepared
    # A failed job's first errors (line, code, message, param) and how many there were.
    errors = fields.List(fields.Dict())
    error_count = fields.Integer()
    quality = fields.Dict()  # schema validity and the answer field's values, once finished
    data_expired_at = _timestamp()  # retention deleted its files then


class BatchListSchema(Schema):
    data = fields.List(fields.Nested(BatchJobSchema), required=True)
    has_more = fields.Boolean(required=True)
    last_id = fields.String(required=True, allow_none=True)


class BatchResultsSchema(Schema):
    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=_JOB_STATUS)
    results_url = fields.String(required=True)
    errors_url = fields.String(required=True, allow_none=True)
    expires_at = _timestamp(required=True, allow_none=True)  # of the links; none for partial ones
    # total, successful, failed, avg_response_time, prompt_tokens, completion_tokens...
    stats = fields.Dict(required=True, allow_none=True)
    partial = fields.Boolean()  # true: links to what has finished so far


class BatchRetrySchema(Schema):
    """A re-drive (scope=job: step, shards, sent) or the job retrying the failed
    requests (scope=failed_requests: retry_of, requests)."""

    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=_JOB_STATUS)
    step = fields.String(validate=validate.OneOf(["prepare", "shards", "finalize", "none"]))
    shards = fields.List(fields.Integer())
    sent = fields.Boolean()  # false: nothing to do, or a re-drive already under way
    retry_of = fields.String()
    requests = fields.Integer(allow_none=True)  # none while another ask is creating it


class EstimateSchema(Schema):
    """A dry run's estimate: queued until the cpu worker has counted, then done
    (with the figures below) or invalid (with the errors a submission would fail with)."""

    estimate_id = fields.String(required=True)
    object = fields.String(required=True)
    dry_run = fields.Boolean(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["queued", "done", "invalid"]))
    model = fields.String(required=True)
    input_url = fields.String(required=True, allow_none=True)
    completion_window = fields.String(required=True, allow_none=True)
    reuse_from = fields.List(fields.String(), required=True)
    created_at = _timestamp(required=True)
    url = fields.String(required=True)
    requests = fields.Integer()
    reused = fields.Integer()
    to_run = fields.Integer()
    prompt_tokens = fields.Integer()
    prompt_tokens_to_run = fields.Integer()
    max_output_tokens = fields.Integer()
    req_per_sec = Number()
    rate_source = fields.String(validate=validate.OneOf(["measured", "configured"]))
    queued_ahead = fields.Integer()
    estimated_run_seconds = Number()
    estimated_seconds = Number()
    estimated_completion = _timestamp()
    estimated_cost = Number(allow_none=True)
    gpu_hour_price = Number(allow_none=True)
    warnings = fields.List(fields.String())
    errors = fields.List(fields.Dict())
    error_count = fields.Integer()


class EstimateDeletedSchema(Schema):
    estimate_id = fields.String(required=True)
    deleted = fields.Boolean(required=True)


class CostRowSchema(Schema):
    model = fields.String(required=True)
    jobs = fields.Integer(required=True)
    requests = fields.Integer(required=True)  # computed by the engine (reused ones are free)
    reused = fields.Integer(required=True)
    engine_seconds = Number(required=True)
    req_per_sec = Number(required=True, allow_none=True)
    hours_for_170k = Number(required=True, allow_none=True)
    cost_for_170k = Number(required=True, allow_none=True)
    gpu_hour_price = Number(required=True, allow_none=True)
    cost = Number(required=True)


class CostReportSchema(Schema):
    data = fields.List(fields.Nested(CostRowSchema), required=True)
    since = _timestamp(required=True, allow_none=True)


# --- admin ---------------------------------------------------------------------------


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
