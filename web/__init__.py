"""Flask app factory. Run with `gunicorn 'web:create_app()'` (the Procfile's `web`).

Importing the package is cheap on purpose: gunicorn's master imports it for its
config and worker class (web/server.py) before the gevent workers monkey-patch
sockets, and nothing that opens connections (redis, urllib3) may be imported
before that patch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from batchsvc.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    from web.app import create_app as build

    return build(settings)
