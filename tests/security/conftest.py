"""The security tests run on the Flask-level fixtures of the unit tests: apps on
private queues and Redis prefixes, a real Redis, no workers."""

from tests.unit.conftest import app, client, make_app, settings

__all__ = ["app", "client", "make_app", "settings"]
