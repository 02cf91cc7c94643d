"""Fetch a client-hosted input file into storage, streaming, with a byte cap.

The URL goes through netguard: public addresses only (unless allowlisted), the
connection pinned to the address that was checked, no redirects."""

from __future__ import annotations

import tempfile

from batchsvc.outbound import netguard
from batchsvc.outbound.netguard import Allowlist
from batchsvc.settings import Settings
from batchsvc.storage.base import Storage

_CHUNK = 1024 * 1024


class FetchError(Exception):
    """The input URL could not be read; the message is safe to show the client."""


def fetch_input(settings: Settings, url: str, storage: Storage, key: str) -> int:
    """A job's (or a dry run's) input URL copied to `key` under the service's limits:
    max_file_bytes, fetch_timeout_s and the outbound allowlist."""
    return fetch_to_storage(
        url,
        storage,
        key,
        max_bytes=settings.max_file_bytes,
        timeout=settings.fetch_timeout_s,
        allow=Allowlist.parse(settings.outbound_allowlist),
    )


def fetch_to_storage(
    url: str, storage: Storage, key: str, *, max_bytes: int, timeout: float, allow: Allowlist | None = None
) -> int:
    """Copy `url` to `key`; returns the byte count. Never holds the file in memory.

    `allow` admits non-public targets (settings.outbound_allowlist); None admits none."""
    try:
        with netguard.request("GET", url, allow=allow, timeout=timeout) as response:
            if response.status_code != 200:
                raise FetchError(f"fetching input_file_url answered HTTP {response.status_code}")
            size = 0
            with tempfile.NamedTemporaryFile(prefix="batchsvc-fetch-") as tmp:
                for chunk in netguard.iter_body(response, max_bytes=max_bytes, chunk_size=_CHUNK):
                    size += len(chunk)
                    tmp.write(chunk)
                tmp.flush()
                storage.put_file(key, tmp.name, content_type="application/jsonl")
            return size
    except netguard.ResponseTooLarge:
        raise FetchError(f"input file exceeds max_file_bytes={max_bytes}") from None
    except netguard.BlockedURL as exc:
        raise FetchError(f"input_file_url refused: {exc}") from None
    except netguard.OutboundError as exc:
        raise FetchError(f"could not fetch input_file_url: {exc}") from None
