"""batchsvc: a self-hosted batch LLM inference service.

This package is the framework-free core. `tasks/` (Celery) and `web/` (Flask)
are thin adapters that turn messages and HTTP calls into calls of this package.
"""

__version__ = "0.1.0"
