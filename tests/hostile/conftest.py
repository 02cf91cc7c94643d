"""The hostile-input suite (issue 9): what a careless or hostile client can send,
against the Flask-level fixtures of the unit tests (a real Redis, no workers) and,
where the HTTP server is the subject, against the server the Procfile runs."""

from tests.unit.conftest import app, client, make_app, settings

__all__ = ["app", "client", "make_app", "settings"]
