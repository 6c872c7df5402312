"""Messaging: durable topics, consumer groups, retries, dead letters and delays on every broker engine."""
