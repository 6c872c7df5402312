"""The examples in examples/ work as the docs say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mezzo.testing.fixtures import RunningNode

EXAMPLES = Path(__file__).parents[2] / "examples"


async def test_every_manifest_applies(node: RunningNode) -> None:
    manifests = sorted(EXAMPLES.glob("*.yaml"))
    assert manifests
    async with node.client() as client:
        results = await client.resources.apply(EXAMPLES)
    assert {r.action for r in results} == {"created"}


def test_messaging_sdk_example(node_process: RunningNode) -> None:
    env = {**os.environ, "MEZZO_URL": node_process.url, "MEZZO_TOKEN": node_process.token}
    result = subprocess.run([sys.executable, str(EXAMPLES / "messaging_sdk.py")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("order later")
