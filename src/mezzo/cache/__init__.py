"""The distributed cache: an embedded engine served over the Redis protocol, and the cache patterns."""
