"""Flower's configuration (`celery -A tasks.worker flower --conf=tasks/flowerconfig.py`):
basic auth from the settings, BATCHSVC_FLOWER_USER and BATCHSVC_FLOWER_PASSWORD.
Without a password in the settings, a random one is made once in
var/flower-password (readable by its owner only), so Flower never runs open."""

from __future__ import annotations

import os
import secrets

from batchsvc.settings import get_settings

_settings = get_settings()


def _password() -> str:
    if _settings.flower_password:
        return _settings.flower_password
    path = _settings.path("var/flower-password")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


# Flower reads these module-level names as its options.
basic_auth = [f"{_settings.flower_user}:{_password()}"]
