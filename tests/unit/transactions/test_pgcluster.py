"""The private PostgreSQL cluster fixture: skips without server binaries, fails then when backends are required."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mezzo.testing import pgcluster


def test_missing_binaries_skip_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcluster, "find_bin", lambda: None)
    monkeypatch.delenv("MEZZO_REQUIRE_BACKENDS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        next(pgcluster.cluster_for_tests())
    monkeypatch.setenv("MEZZO_REQUIRE_BACKENDS", "1")
    with pytest.raises(pytest.fail.Exception, match="MEZZO_REQUIRE_BACKENDS=1"):
        next(pgcluster.cluster_for_tests())


def test_orphans_of_dead_test_runs_are_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcluster.tempfile, "gettempdir", lambda: str(tmp_path))
    dead, alive, foreign = (tmp_path / f"{pgcluster.DIR_PREFIX}{n}" for n in ("dead", "alive", "foreign"))
    for directory in (dead, alive, foreign):
        directory.mkdir()
    (dead / "owner.pid").write_text("999999999")  # no such process
    (alive / "owner.pid").write_text(str(os.getpid()))
    pgcluster.reap_orphans(tmp_path, [])
    assert not dead.exists() and alive.exists() and foreign.exists()  # no owner file: not ours to judge
