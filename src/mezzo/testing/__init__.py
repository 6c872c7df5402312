"""Helpers for testing Mezzo and applications built on it (pytest fixtures live in ``fixtures``)."""
