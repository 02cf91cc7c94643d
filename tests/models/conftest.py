"""Models, workers and scheduling on real components: Celery workers on the real
Redis, the tiny vLLM models or the deterministic instant engine, local storage."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
