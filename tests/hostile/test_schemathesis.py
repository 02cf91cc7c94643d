"""Schemathesis on every operation of the OpenAPI document (issue 11), against the
API as the Procfile serves it (gunicorn, real Redis, no workers), with a real
admin key so that every operation is reachable. Each response must be no 5xx,
have a status, content type and body the document declares, and, when it is an
error, be the JSON envelope. Cases are generated both valid (positive) and
invalid (negative) against the document.

The example budget is small so the run fits CI (MAX_EXAMPLES per operation and
mode, derandomized, no example database): a smoke test of the whole surface on
every push, not an exhaustive fuzz. `SCHEMATHESIS_EXAMPLES=200 pytest ...` runs a
deeper one. (schemathesis' own pytest plugin, `from_fixture`, does not run under
pytest 9, so each operation gets a Hypothesis test built here.)"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from batchsvc.access import Role
from batchsvc.errors import ErrorType
from tests.hostile.conftest import Served, serve

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ERROR_TYPES = {t.value for t in ErrorType}


@pytest.fixture(scope="module")
def admin_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("schemathesis"), role=Role.ADMIN)


def envelope_problem(response: Any) -> str | None:
    """Why an error response is not the one envelope, or None when it is."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]  # lowercase names, lists of values
    if not content_type.startswith("application/json"):
        return f"content type {content_type!r}"
    try:
        body = response.json()
    except ValueError:
        return "a body that is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"no error object: {body!r:.200}"
    if error.get("type") not in ERROR_TYPES or not isinstance(error.get("message"), str):
        return f"an error without a known type and a message: {error!r:.200}"
    if not isinstance(error.get("details"), dict):
        return f"an error without details: {error!r:.200}"
    return None


def fuzz(operation: Any, mode: GenerationMode, served: Served, statuses: Counter[int]) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {served.key}"}, checks=CHECKS, timeout=30)
        statuses[response.status_code] += 1
        problem = envelope_problem(response)
        assert problem is None, f"{case.method} {case.formatted_path} answered {response.status_code} with {problem}"

    run()


def test_every_operation_answers_what_the_document_says(
    admin_served: Served, record_property: pytest.RecordProperty
) -> None:
    schema = schemathesis.openapi.from_url(f"{admin_served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 3, [op.label for op in operations]  # the document lists the API, not nothing
    failures = []
    statuses: Counter[int] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, admin_served, statuses)
            except Unsatisfiable:  # nothing in it can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # every operation is tried; all failures reported together
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    summary = f"{len(operations)} operations, {sum(statuses.values())} calls, statuses {dict(sorted(statuses.items()))}"
    record_property("schemathesis", summary)
    print(summary)
    assert not failures, "\n\n".join(failures)
    assert any(200 <= status < 300 for status in statuses), summary  # the key works: not everything refused
