"""Fetch a client-hosted input file into storage, streaming, with a byte cap."""

from __future__ import annotations

import tempfile
from urllib.parse import urlsplit

import requests

from batchsvc.storage import Storage

_CHUNK = 1024 * 1024


class FetchError(Exception):
    """The input URL could not be read; the message is safe to show the client."""


def fetch_to_storage(url: str, storage: Storage, key: str, *, max_bytes: int, timeout: float) -> int:
    """Copy `url` to `key`; returns the byte count. Never holds the file in memory."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError("input_file_url must be an http or https URL")
    try:
        with requests.get(url, stream=True, timeout=timeout, allow_redirects=False) as response:
            if response.status_code != 200:
                raise FetchError(f"fetching input_file_url answered HTTP {response.status_code}")
            size = 0
            with tempfile.NamedTemporaryFile(prefix="batchsvc-fetch-") as tmp:
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"input file exceeds max_file_bytes={max_bytes}")
                    tmp.write(chunk)
                tmp.flush()
                storage.put_file(key, tmp.name, content_type="application/jsonl")
            return size
    except requests.RequestException as exc:
        raise FetchError(f"could not fetch input_file_url ({type(exc).__name__})") from None
