"""The steps of a job: submit, prepare, shards, finalize, and what acts on a job's life."""
