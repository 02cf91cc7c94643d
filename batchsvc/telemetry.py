"""Sentry, switched on by SENTRY_DSN. Prompts and request bodies never leave."""

from __future__ import annotations

from typing import Any

from batchsvc.settings import Settings


def _scrub(event: Any, _hint: dict[str, Any]) -> Any:
    """Drop what could hold candidate data or credentials, whatever the SDK's defaults."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        request.pop("query_string", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            for name in list(headers):
                if name.lower() in ("authorization", "cookie", "x-api-key"):
                    headers[name] = "[Filtered]"
    return event


def init_sentry(settings: Settings, component: str) -> bool:
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        server_name=component,
        # send_default_pii is left unset: unset, the SDK sends no user data and
        # scrubs auth headers and cookies (setting it at all is deprecated in 2.x).
        max_request_body_size="never",
        include_local_variables=False,  # locals would carry prompts
        before_send=_scrub,
    )
    return True
