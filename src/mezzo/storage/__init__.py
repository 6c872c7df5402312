"""Durable primitives shared by every service: the revisioned KV store with watch."""

from __future__ import annotations

from mezzo.storage.kv import KVStore


def open_store(url: str) -> KVStore:
    """The engine for a store URL: ``sqlite:///PATH`` or ``postgresql://...``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from mezzo.storage.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "a postgresql:// store needs the 'postgres' extra: pip install 'mezzo[postgres]'"
            ) from exc
        from mezzo.storage.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite:/// or postgresql://")
