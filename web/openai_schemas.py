"""Request schemas of the OpenAI-compatible Files and Batches API (marshmallow).

The rules are OpenAI's where OpenAI has one (metadata: at most 16 string pairs,
keys up to 64 characters, values up to 512), so a client that works against
OpenAI is never refused here for something OpenAI accepts."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates
from werkzeug.datastructures import FileStorage

from batchsvc.inference.validation import DEFAULT_SUPPORTED_URLS
from batchsvc.store.jobs import parse_priority
from web.schemas import PRIORITY_HELP, WINDOW, PageSchema

# The only purpose a client may upload; "batch_output" files are made by finalize.
UPLOAD_PURPOSE = "batch"
FILE_PURPOSES = ("batch", "batch_output")
BATCH_ENDPOINTS = tuple(sorted(DEFAULT_SUPPORTED_URLS))


class _Upload(fields.Field):
    """The multipart `file` part, as Werkzeug hands it over (spooled, unread)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> FileStorage:
        if not isinstance(value, FileStorage):
            raise ValidationError("must be a file part of a multipart/form-data request")
        return value


class UploadFileSchema(Schema):
    """`POST /v1/files`: the form fields and the file part, loaded together."""

    class Meta:
        unknown = RAISE

    file = _Upload(required=True)
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
