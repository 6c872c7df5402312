"""Audit of issue 2 (foundation), the test harness: a backend that is absent makes its tests skip with
the reason, and fail instead under MEZZO_REQUIRE_BACKENDS=1. Checked by running the harness's own
backend tests in a pytest subprocess pointed at a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mezzo.testing.fixtures import free_port

TESTS = Path(__file__).parents[1]
HARNESS = TESTS / "integration" / "test_backends_harness.py"


def run_harness(require: bool) -> subprocess.CompletedProcess[str]:
    closed = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "MEZZO_REQUIRE_BACKENDS"}
    env |= {"MEZZO_TEST_POSTGRES": f"postgresql://postgres@127.0.0.1:{closed}/test",
            "MEZZO_TEST_REDIS": f"redis://127.0.0.1:{closed}/0",
            "MEZZO_TEST_NATS": f"nats://127.0.0.1:{closed}"}
    if require:
        env["MEZZO_REQUIRE_BACKENDS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsE", str(HARNESS)],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=90)


def test_absent_backends_skip_with_their_reason() -> None:
    result = run_harness(require=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3 skipped" in result.stdout
    for name in ("PostgreSQL", "Redis", "NATS"):
        assert f"{name} is not reachable (" in result.stdout, result.stdout[-2000:]


def test_absent_backends_fail_when_backends_are_required() -> None:
    result = run_harness(require=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "3 error" in result.stdout and "skipped" not in result.stdout
    for name in ("PostgreSQL", "Redis", "NATS"):
        assert f"MEZZO_REQUIRE_BACKENDS=1 but {name} is not reachable" in result.stdout, result.stdout[-2000:]
