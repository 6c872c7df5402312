"""The transaction crash suite, long run: 100+ SIGKILLs of the coordinator under bank transfers (saga,
TCC, XA, two-phase messages over PostgreSQL and MariaDB accounts), then every transaction must have
ended whole, money conserved, no hanging branch (``tests/integration/tx_bank.py``).

Not part of ``make test``: it runs with ``MEZZO_LONG=1`` (see ``tests/long/README.md``):

    MEZZO_LONG=1 .venv/bin/pytest tests/long -q -s
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from integration.tx_bank import Bank, CoordinatorProcess, bank_fixture, chaos  # noqa: F401  (the bank fixture)

ITERATIONS = int(os.environ.get("MEZZO_LONG_ITERATIONS", "100"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MEZZO_LONG") != "1",
                       reason="long crash suite: run it with MEZZO_LONG=1 (tests/long/README.md)"),
    pytest.mark.timeout(4 * 3600),
]


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The coordinator's store: a fresh PostgreSQL schema, or SQLite in the node's data dir."""
    if request.param == "postgres":
        return "postgres", str(request.getfixturevalue("postgres_url"))
    return "sqlite", f"sqlite:///{tmp_path / 'data' / 'mezzo.db'}"


async def test_hundred_kills(engine: tuple[str, str], bank: Bank, tmp_path: Path) -> None:
    name, store = engine
    data = tmp_path / "data"
    data.mkdir()
    coordinator = CoordinatorProcess(data, store)
    started = time.monotonic()
    try:
        stats, problems = await chaos(bank, coordinator, iterations=ITERATIONS, clients=4, seed=2026,
                                      run_for=lambda rng: rng.uniform(0.3, 2.5), settle=180)
    finally:
        coordinator.kill()
    print(f"\n{name}: {stats.iterations} iterations, {stats.kills} kills, {len(bank.gids)} transactions begun "
          f"{stats.started}, ended {stats.statuses}, {stats.client_errors} transfers cut short, "
          f"{stats.xa_recovered} XA branches finished by the app's recovery, "
          f"{len(problems)} violations, {coordinator.slow_starts} slow starts, {time.monotonic() - started:.0f} s")
    for problem in problems[:20]:
        print("  violation:", problem)
    assert problems == []
    assert stats.kills == ITERATIONS
