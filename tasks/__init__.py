"""Celery adapters: each task turns ids into one call of the `batchsvc` core."""
