"""The legal moves of a global transaction and of a branch: anything else raises, nothing is written."""

from __future__ import annotations

import pytest

from mezzo.transactions.model import (
    BranchStatus,
    IllegalTransition,
    Status,
    check_branch_move,
    check_move,
)


def test_a_branch_ends_once() -> None:
    check_branch_move(BranchStatus.PREPARED, BranchStatus.SUCCEED, "b")
    check_branch_move(BranchStatus.PREPARED, BranchStatus.FAILED, "b")
    for ended in (BranchStatus.SUCCEED, BranchStatus.FAILED):
        for wanted in BranchStatus:
            with pytest.raises(IllegalTransition, match=f"b is {ended.value}; it cannot become {wanted.value}"):
                check_branch_move(ended, wanted, "b")


def test_a_finished_transaction_moves_nowhere() -> None:
    for ended in (Status.SUCCEED, Status.FAILED):
        for wanted in Status:
            with pytest.raises(IllegalTransition):
                check_move(ended, wanted, "tx")
    check_move(Status.SUBMITTED, Status.ABORTING, "tx")
    with pytest.raises(IllegalTransition):
        check_move(Status.ABORTING, Status.SUCCEED, "tx")
