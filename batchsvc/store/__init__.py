"""Records in Redis: jobs, files, API keys, tenants."""
