"""Every call batchsvc makes to the outside: the SSRF guard, input fetches, webhooks."""
