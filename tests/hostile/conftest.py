"""The hostile-input suite (issue 9): what a careless or hostile client can send,
against the Flask-level fixtures of the unit tests (a real Redis, no workers) and,
where the HTTP server is the subject, against the server the Procfile runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import make_settings
from tests.support.invariants import INSTANT_MODEL
from tests.support.stack import Stack, unique_names
from tests.unit.conftest import app, client, make_app, settings

__all__ = ["app", "client", "make_app", "settings"]


@pytest.fixture(scope="module")
def instant_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Real workers on the instant engine. Shards of 100 so a few hundred requests
    make several; 10 ms per request (BATCHSVC_INSTANT_DELAY_S) so a job runs long
    enough to be retried and cancelled while it runs."""
    tmp = tmp_path_factory.mktemp("hostile-stack")
    settings = make_settings(tmp, shard_size=100, progress_every=20, **unique_names())
    stack = Stack(settings, tmp, llm_models=[INSTANT_MODEL], llm_env={"BATCHSVC_INSTANT_DELAY_S": "0.01"})
    try:
        yield stack.start()
    finally:
        stack.stop()
