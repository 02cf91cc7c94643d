"""Webhook delivery: one POST per terminal job state, retried with backoff.

Every attempt of a delivery carries the same `webhook-id`, so a receiver can
drop duplicates (headers follow the Standard Webhooks names).

Signing follows Standard Webhooks v1 (https://www.standardwebhooks.com): every
attempt is signed afresh, `webhook-signature: v1,<base64 HMAC-SHA256>` over
`{webhook-id}.{webhook-timestamp}.{body}`, keyed by the base64 part of a
`whsec_` secret. During a rotation each configured secret adds one signature,
so a receiver holding either the old or the new secret verifies. `verify` is
the receiver's side."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from secrets import token_bytes
from typing import Any

import orjson

from batchsvc import __version__
from batchsvc.outbound import netguard
from batchsvc.outbound.netguard import Allowlist

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300  # the spec's usual 5 minutes, either side of now
_MIN_KEY_BYTES = 24  # the spec asks for 24 to 64 random bytes


class WebhookError(Exception):
    """This attempt failed; the caller decides whether to try again."""


class WebhookBlocked(WebhookError):
    """netguard refused the URL (not public, bad scheme, a redirect): retrying cannot help."""


class WebhookVerificationError(Exception):
    """A received webhook is not authentic, or its timestamp is too far from now."""


def delivery_id(job_id: str, status: str) -> str:
    return "msg_" + hashlib.blake2b(f"{job_id}:{status}".encode(), digest_size=12).hexdigest()


def payload(job_id: str, status: str, stats: dict[str, Any] | None, results_url: str | None) -> bytes:
    return orjson.dumps({"job_id": job_id, "status": status, "stats": stats, "results_url": results_url})


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base, 2*base, 4*base ... capped."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def new_secret() -> str:
    """A fresh `whsec_` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after `whsec_` (the prefix may be left off)."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        # Never echo the secret: this message can reach logs.
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"a webhook secret must hold at least {_MIN_KEY_BYTES} bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">` under the secret."""
    if "." in msg_id:
        # A dot would make the signed content ambiguous.
        raise ValueError("a webhook id may not contain '.'")
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), content, hashlib.sha256).digest()).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, in the order given (newest first)."""
    if not secrets:
        raise ValueError("no webhook secret to sign with")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def verify(
    secret_or_secrets: str | Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises WebhookVerificationError unless it is authentic and fresh.

    `body` must be the raw request body, before any JSON parsing. Any of the
    secrets may match (several are allowed while one is being rotated), and
    header names are matched case-insensitively.
    """
    keys = [secret_or_secrets] if isinstance(secret_or_secrets, str) else list(secret_or_secrets)
    if not keys:
        raise ValueError("no webhook secret to verify with")
    found = {name.lower(): value for name, value in headers.items()}
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    missing = [name for name in names if not found.get(name)]
    if missing:
        raise WebhookVerificationError("missing header " + ", ".join(missing))
    msg_id, stamp, signatures = (found[name] for name in names)
    # Unix seconds; the length cap keeps a hostile header from reaching int()'s digit limit.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 15):
        raise WebhookVerificationError("webhook-timestamp is not an integer")
    if "." in msg_id:
        raise WebhookVerificationError("webhook-id may not contain '.'")
    timestamp = int(stamp)
    # Both ways: a stale timestamp is a replay, a future one a replay prepared in advance.
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    expected = [sign(secret, msg_id, timestamp, body).encode() for secret in keys]
    for candidate in signatures.split():
        # Entries of other schemes (v1a, ...) cannot match a v1 value, so no need to skip them.
        if any(hmac.compare_digest(want, candidate.encode()) for want in expected):
            return
    raise WebhookVerificationError("no signature matches")


@functools.cache
def _warn_unsigned() -> None:
    log.warning("webhook_secrets is empty: webhooks go out unsigned and receivers cannot verify them")


def _add_signature(headers: dict[str, str], secrets: Sequence[str], body: bytes) -> None:
    """Sign the very id and timestamp that `headers` sends; without secrets, send unsigned."""
    if not secrets:
        _warn_unsigned()
        return
    headers["webhook-signature"] = signature_header(
        secrets, headers["webhook-id"], int(headers["webhook-timestamp"]), body
    )


def deliver(
    url: str, body: bytes, msg_id: str, *, timeout: float, secrets: Sequence[str] = (), allow: Allowlist | None = None
) -> int:
    """POST once; returns the status code on 2xx, raises WebhookError otherwise.

    The URL goes through netguard (public addresses only unless `allow` admits them,
    no redirects); a refusal raises WebhookBlocked, which no retry can fix."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"batchsvc/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(time.time())),
    }
    _add_signature(headers, secrets, body)
    try:
        # The receiver's body is never read: closing the response drops it.
        with netguard.request("POST", url, allow=allow, timeout=timeout, headers=headers, data=body) as response:
            status = response.status_code
    except netguard.BlockedURL as exc:
        raise WebhookBlocked(f"webhook_url refused: {exc}") from None
    except netguard.OutboundError as exc:
        raise WebhookError(f"posting to the webhook failed: {exc}") from None
    if not 200 <= status < 300:
        raise WebhookError(f"webhook answered HTTP {status}")
    return status
