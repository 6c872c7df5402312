"""The ``redis_servers`` and ``memcached_servers`` fixtures: processes on free ports, killed in teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .memcached_procs import MemcachedServers
from .redis_procs import RedisServers


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    servers = RedisServers(workdir)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def memcached_servers(tmp_path: Path) -> Iterator[MemcachedServers]:
    workdir = tmp_path / "memcached"
    workdir.mkdir()
    servers = MemcachedServers(workdir)
    try:
        yield servers
    finally:
        servers.stop_all()
