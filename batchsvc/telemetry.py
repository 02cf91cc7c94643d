"""Sentry, switched on by SENTRY_DSN. Prompts and request bodies never leave."""

from __future__ import annotations

from typing import Any

from batchsvc.settings import Settings


def _scrub(event: Any, _hint: dict[str, Any]) -> Any:
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
    return event


def init_sentry(settings: Settings, component: str) -> bool:
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        server_name=component,
        send_default_pii=False,
        max_request_body_size="never",
        include_local_variables=False,  # locals would carry prompts
        before_send=_scrub,
    )
    return True
