from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mezzo.testing.fixtures import RunningNode, start_node


@pytest.fixture(params=["embedded"])
async def mq(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node whose messaging runs on each broker engine (embedded today)."""
    running = await start_node(tmp_path / "data", broker=request.param)
    try:
        yield running
    finally:
        await running.node.stop()
