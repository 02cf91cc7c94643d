"""The Flask app: its request class, error handlers, auth, audit and blueprints."""

from __future__ import annotations

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from batchsvc.logs import configure_logging
from batchsvc.services import Services
from batchsvc.settings import Settings, get_settings
from batchsvc.telemetry import init_sentry
from tasks.celery_app import create_celery
from web.request import ApiRequest, guard_input, options_response


class BatchsvcFlask(Flask):
    request_class = ApiRequest

    def make_default_options_response(self) -> Response:
        return options_response(self)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    init_sentry(settings, "web")
    app = BatchsvcFlask("batchsvc", static_folder=None)
    # Werkzeug answers 413 itself past this size: the file plus room for the form fields.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_file_bytes + 1024 * 1024
    app.extensions["batchsvc"] = services = Services(settings)
    services.models  # noqa: B018  (reads and checks configs/models.yaml: a bad entry stops the API here)
    app.extensions["celery"] = create_celery(settings)
    if settings.forwarded_hops:
        hops = settings.forwarded_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    configure_logging(settings.log_format, settings.log_level, "web")

    from web import audit, auth
    from web.admin_api import bp as admin_bp
    from web.api import bp
    from web.backup_api import bp as backup_bp
    from web.errors import register_error_handlers
    from web.fleet_api import bp as fleet_bp
    from web.health import health
    from web.instrument import install as instrument
    from web.openai_api import bp as openai_bp
    from web.openapi import install as install_openapi

    app.wsgi_app = guard_input(app.wsgi_app)  # type: ignore[method-assign]
    api = install_openapi(app)
    register_error_handlers(app)
    audit.install(app)
    auth.install(app)
    instrument(app)
    for blueprint in (health, bp, openai_bp, admin_bp, fleet_bp, backup_bp):
        api.register_blueprint(blueprint)  # each is declared: it goes into /openapi.json
    return app
