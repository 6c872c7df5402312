"""XA branch names and the decisions recovery takes for in-doubt branches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mezzo.transactions.xa import check_mysql_server, decision, parse_xid, xid

SAFE = st.text(alphabet="abcXYZ019._:@-", min_size=1, max_size=40)


@given(SAFE, st.text(alphabet="abc019._@-", min_size=1, max_size=10))
def test_xid_round_trips(gid: str, branch_id: str) -> None:
    assert parse_xid(xid(gid, branch_id)) == (gid, branch_id)


@pytest.mark.parametrize("bad", ["", "a'b", "a b", "x" * 129, "ü"])
def test_unsafe_names_never_reach_sql(bad: str) -> None:
    with pytest.raises(ValueError):
        xid(bad, "01")
    with pytest.raises(ValueError):
        xid("g", bad)


def test_foreign_xids_are_not_ours() -> None:
    assert parse_xid("dtm:g:01") is None and parse_xid("mz:only") is None


@pytest.mark.parametrize(("status", "action"), [
    ("succeed", "commit"), ("submitted", "commit"), ("failed", "rollback"), ("aborting", "rollback"),
    ("prepared", None), (None, None)])
def test_recovery_decides_only_what_the_coordinator_decided(status: str | None, action: str | None) -> None:
    assert decision(status) == action


@pytest.mark.parametrize("version", ["5.5.5-10.11.19-MariaDB-0+deb12u1", "10.5.0-MariaDB", "11.4.2-MariaDB-log",
                                     "5.7.7", "8.0.36", "8.4.0-commercial", "9.1.0", "proxy"])
def test_servers_that_keep_a_prepared_branch_after_its_session_ends(version: str) -> None:
    check_mysql_server(version)


@pytest.mark.parametrize("version", ["5.5.5-10.4.32-MariaDB", "10.3.39-MariaDB-log", "5.7.6", "5.6.51-log"])
def test_servers_that_roll_a_prepared_branch_back_on_disconnect_are_refused(version: str) -> None:
    with pytest.raises(RuntimeError, match="roll back a prepared XA transaction"):
        check_mysql_server(version)
