"""Object storage: the interface, its local and S3 backends, the key layout and the manifest."""
