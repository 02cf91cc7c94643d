"""The batchsvc command line: an HTTP client of the API."""
