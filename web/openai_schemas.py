"""Schemas of the OpenAI-compatible Files and Batches API (marshmallow): what
the views read, and the file, batch and list objects they answer, key for key.

The request rules are OpenAI's where OpenAI has one (metadata: at most 16 string pairs,
keys up to 64 characters, values up to 512), so a client that works against
OpenAI is never refused here for something OpenAI accepts."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates

from batchsvc.inference.validation import DEFAULT_SUPPORTED_URLS
from batchsvc.store.jobs import JobStatus, parse_priority
from web.schemas import PRIORITY_HELP, WINDOW, FilePart, PageSchema

# The only purpose a client may upload; "batch_output" files are made by finalize.
UPLOAD_PURPOSE = "batch"
FILE_PURPOSES = ("batch", "batch_output")
BATCH_ENDPOINTS = tuple(sorted(DEFAULT_SUPPORTED_URLS))


class UploadFileSchema(Schema):
    """`POST /v1/files`: the form fields and the file part, loaded together."""

    class Meta:
        unknown = RAISE

    file = FilePart(required=True, metadata={"description": "the JSONL of requests"})
    purpose = fields.String(
        required=True,
        validate=validate.Equal(UPLOAD_PURPOSE, error=f"only purpose '{UPLOAD_PURPOSE}' can be uploaded"),
    )

    @post_load
    def _filename(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # Browsers and some clients send a path; keep its last segment only.
        raw = (data["file"].filename or "").replace("\\", "/").rsplit("/", 1)[-1]
        data["filename"] = raw[:255] or "upload.jsonl"
        return data


class ListFilesSchema(PageSchema):
    purpose = fields.String(load_default=None, validate=validate.OneOf(FILE_PURPOSES))
    # Files are indexed newest first; that is the one order on offer.
    order = fields.String(load_default="desc", validate=validate.OneOf(["desc"]))


class CreateBatchSchema(Schema):
    """`POST /v1/batches`."""

    class Meta:
        unknown = RAISE

    input_file_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    endpoint = fields.String(required=True, validate=validate.OneOf(BATCH_ENDPOINTS))
    # OpenAI offers "24h" only; any number of s, m, h or d also works here.
    completion_window = fields.String(required=True, validate=WINDOW)
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.String(validate=validate.Length(max=512)),
        validate=validate.Length(max=16),
        allow_none=True,
        load_default=None,
    )

    @validates("metadata")
    def _metadata(self, value: dict[str, str] | None, **_: Any) -> None:
        # Two keys mean something to batchsvc: "model" (a job has one model) and
        # "priority": a digit '0'-'9' or a word (batchsvc.store.jobs.PRIORITY_WORDS).
        if value and "priority" in value and parse_priority(value["priority"]) is None:
            raise ValidationError({"priority": [PRIORITY_HELP]})

    @post_load
    def _defaults(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["metadata"] = data.get("metadata") or {}
        return data


# --- responses: OpenAI's objects ------------------------------------------------------

# OpenAI has no "queued": a batch it accepted is "validating" until it runs.
OPENAI_STATUS = {JobStatus.QUEUED: "validating"}
BATCH_STATUSES = sorted({OPENAI_STATUS.get(status, status.value) for status in JobStatus})


def _unix(**kwargs: Any) -> fields.Integer:
    """A time as unix seconds (OpenAI's objects count time so)."""
    return fields.Integer(metadata={"description": "unix seconds"}, **kwargs)


def _constant(value: str) -> fields.String:
    return fields.String(required=True, validate=validate.Equal(value))


class OpenAIFileSchema(Schema):
    id = fields.String(required=True)
    object = _constant("file")
    bytes = fields.Integer(required=True)
    created_at = _unix(required=True)
    filename = fields.String(required=True)
    purpose = fields.String(required=True, validate=validate.OneOf(FILE_PURPOSES))
    status = _constant("processed")
    status_details = fields.String(required=True, allow_none=True)
    expires_at = _unix(required=True, allow_none=True)


class _ListSchema(Schema):
    object = _constant("list")
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


class OpenAIFileListSchema(_ListSchema):
    data = fields.List(fields.Nested(OpenAIFileSchema), required=True)


class OpenAIFileDeletedSchema(Schema):
    id = fields.String(required=True)
    object = _constant("file")
    deleted = fields.Boolean(required=True)


class OpenAIBatchErrorSchema(Schema):
    code = fields.String(required=True, allow_none=True)
    message = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    line = fields.Integer(required=True, allow_none=True)


class OpenAIBatchErrorsSchema(Schema):
    object = _constant("list")
    data = fields.List(fields.Nested(OpenAIBatchErrorSchema), required=True)


class OpenAIRequestCountsSchema(Schema):
    total = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)


class _CachedTokensSchema(Schema):
    cached_tokens = fields.Integer(required=True)


class _ReasoningTokensSchema(Schema):
    reasoning_tokens = fields.Integer(required=True)


class OpenAIBatchUsageSchema(Schema):
    input_tokens = fields.Integer(required=True)
    input_tokens_details = fields.Nested(_CachedTokensSchema, required=True)
    output_tokens = fields.Integer(required=True)
    output_tokens_details = fields.Nested(_ReasoningTokensSchema, required=True)
    total_tokens = fields.Integer(required=True)


class OpenAIBatchSchema(Schema):
    """A batchsvc job as an OpenAI batch object."""

    id = fields.String(required=True)
    object = _constant("batch")
    # These three are None for a job submitted to /v1/batch (by URL or upload, no endpoint named).
    endpoint = fields.String(required=True, allow_none=True)
    model = fields.String(required=True)
    errors = fields.Nested(OpenAIBatchErrorsSchema, required=True, allow_none=True)
    input_file_id = fields.String(required=True, allow_none=True)
    completion_window = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(BATCH_STATUSES))
    output_file_id = fields.String(required=True, allow_none=True)
    error_file_id = fields.String(required=True, allow_none=True)
    created_at = _unix(required=True)
    in_progress_at = _unix(required=True, allow_none=True)
    expires_at = _unix(required=True, allow_none=True)
    finalizing_at = _unix(required=True, allow_none=True)
    completed_at = _unix(required=True, allow_none=True)
    failed_at = _unix(required=True, allow_none=True)
    expired_at = _unix(required=True, allow_none=True)
    cancelling_at = _unix(required=True, allow_none=True)
    cancelled_at = _unix(required=True, allow_none=True)
    request_counts = fields.Nested(OpenAIRequestCountsSchema, required=True)
    # Strings for batches made here; a /v1/batch job's metadata is shown as it was given.
    metadata = fields.Dict(required=True, allow_none=True)
    usage = fields.Nested(OpenAIBatchUsageSchema, required=True)


class OpenAIBatchListSchema(_ListSchema):
    data = fields.List(fields.Nested(OpenAIBatchSchema), required=True)
