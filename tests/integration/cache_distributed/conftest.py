"""The ``redis_servers`` and ``memcached_servers`` fixtures: processes on free ports, killed in teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .memcached_procs import MemcachedServers
from .redis_procs import RedisServers, ServerSet

S = TypeVar("S", bound=ServerSet)


def _servers(kind: type[S], workdir: Path) -> Iterator[S]:
    workdir.mkdir()
    servers = kind(workdir)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    yield from _servers(RedisServers, tmp_path / "redis")


@pytest.fixture
def memcached_servers(tmp_path: Path) -> Iterator[MemcachedServers]:
    yield from _servers(MemcachedServers, tmp_path / "memcached")
