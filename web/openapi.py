"""The API declared once: flask-smorest blueprints whose arguments and responses
are marshmallow schemas, and the OpenAPI 3 document generated from them, served
at /openapi.json with a reference page at /docs.

Views declare what they read with ``@bp.arguments(Schema, location=...)``, what
they answer with ``@bp.response(status, Schema)`` and the errors they give with
``@bp.error(status, description)``. The ``multipart`` location is a whole
multipart/form-data body, its fields and file parts loaded by one schema (any
other content type is a 415). Arguments are read the way the
rest of the API reads a body (web/request.py: bounded in size and depth, a field
given twice refused), and a schema that refuses them raises marshmallow's
ValidationError, which web/errors.py turns into the one error envelope. The page's
assets come from the installed swagger-ui-bundle package, so /docs works offline.
"""

from __future__ import annotations

from typing import Any

import flask_smorest
import swagger_ui_bundle
from flask import Blueprint as FlaskBlueprint
from flask import Flask, send_from_directory
from marshmallow import Schema, ValidationError, fields, validate
from webargs.flaskparser import FlaskParser

from batchsvc import __version__
from batchsvc.errors import ErrorType, ServiceError
from web.request import json_object, single_values

SECURITY_SCHEME = "bearerAuth"
MULTIPART = "multipart/form-data"
DOCS_ASSETS = "/docs/assets/"
# Served without a key: what the API is, not what it holds.
PUBLIC_ENDPOINTS = frozenset({"api-docs.openapi_json", "api-docs.openapi_swagger_ui", "openapi-assets.asset"})


class ErrorBodySchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf([t.value for t in ErrorType]))
    message = fields.String(required=True)
    # What the client needs to act on: the fields at fault, the line, the limit broken.
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    """The one error envelope: every 4xx and 5xx the API answers has this body."""

    error = fields.Nested(ErrorBodySchema, required=True)


class ApiParser(FlaskParser):
    """Reads arguments as web/request.py reads bodies, and lets the schema decide
    what an unknown field is (our schemas refuse them: a misspelt parameter is a
    422, not a silent default)."""

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {
        "json": None,
        "form": None,
        "json_or_form": None,
        "querystring": None,
        "query": None,
        "files": None,
        "multipart": None,
        "headers": "exclude",
        "cookies": "exclude",
    }
    __location_map__ = {**FlaskParser.__location_map__, "multipart": "load_multipart"}

    def load_json(self, req: Any, schema: Schema) -> Any:
        return json_object()

    def load_form(self, req: Any, schema: Schema) -> Any:
        return single_values(req.form)

    def load_files(self, req: Any, schema: Schema) -> Any:
        return single_values(req.files, "file part")

    def load_multipart(self, req: Any, schema: Schema) -> Any:
        if req.mimetype != MULTIPART:
            raise ServiceError(
                ErrorType.UNSUPPORTED_MEDIA_TYPE,
                f"send {MULTIPART} with the fields and the file part",
                {"content_type": req.mimetype or None},
            )
        return {**self.load_form(req, schema), **self.load_files(req, schema)}

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, **_: Any) -> Any:
        # webargs nests the messages under the location ({"json": {...}}); the
        # envelope names fields directly, whichever part of the request they came from.
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:
            (messages,) = messages.values()
        raise ValidationError(messages)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = ApiParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": MULTIPART,
    }

    def error(self, status: int, description: str) -> Any:
        """Document an error this view answers (the envelope, web/errors.py)."""
        return self.alt_response(status, schema=ErrorSchema, description=description)


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """web/errors.py handles every error; flask-smorest's own handler would
        answer with its envelope, not ours."""


def install(app: Flask) -> Api:
    app.config.update(
        API_TITLE="batchsvc",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=DOCS_ASSETS,
    )
    spec_kwargs = {
        "info": {
            "description": "Batch LLM inference: OpenAI-batch JSONL in, results out. "
            "Two API shapes: /v1/batch (native) and /v1/files + /v1/batches (OpenAI's Batch API)."
        },
        "security": [{SECURITY_SCHEME: []}],
    }
    api = Api(app, spec_kwargs=spec_kwargs)
    api.spec.components.security_scheme(SECURITY_SCHEME, {"type": "http", "scheme": "bearer"})

    assets = FlaskBlueprint("openapi-assets", __name__)

    @assets.get(f"{DOCS_ASSETS}<path:name>")
    def asset(name: str) -> Any:
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, name, max_age=3600)

    app.register_blueprint(assets)
    return api
