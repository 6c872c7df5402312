"""Types of the transaction coordinator: global transactions, branches, their states and legal moves."""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Mode(StrEnum):
    SAGA = "saga"
    TCC = "tcc"
    XA = "xa"
    MSG = "msg"


class Status(StrEnum):
    """Global states (DTM's names): a transaction ends in ``succeed`` or ``failed``."""

    PREPARED = "prepared"
    SUBMITTED = "submitted"
    ABORTING = "aborting"
    SUCCEED = "succeed"
    FAILED = "failed"


FINAL = frozenset({Status.SUCCEED, Status.FAILED})

# The only moves a global transaction may make; anything else is a 409.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PREPARED: frozenset({Status.SUBMITTED, Status.ABORTING, Status.FAILED}),
    Status.SUBMITTED: frozenset({Status.SUCCEED, Status.ABORTING}),
    Status.ABORTING: frozenset({Status.FAILED}),
    Status.SUCCEED: frozenset(),
    Status.FAILED: frozenset(),
}


class BranchStatus(StrEnum):
    PREPARED = "prepared"
    SUCCEED = "succeed"
    FAILED = "failed"


BRANCH_TRANSITIONS: dict[BranchStatus, frozenset[BranchStatus]] = {
    BranchStatus.PREPARED: frozenset({BranchStatus.SUCCEED, BranchStatus.FAILED}),
    BranchStatus.SUCCEED: frozenset(),
    BranchStatus.FAILED: frozenset(),
}

# The ops each mode calls: the forward op first, then the one that undoes it.
OPS: dict[Mode, tuple[str, str]] = {
    Mode.SAGA: ("action", "compensate"),
    Mode.TCC: ("confirm", "cancel"),
    Mode.XA: ("commit", "rollback"),
    Mode.MSG: ("action", ""),
}

TOPIC_SCHEME = "topic://"  # a message step that publishes to a Mezzo topic instead of calling a URL


class IllegalTransition(Exception):
    def __init__(self, what: str, current: str, wanted: str) -> None:
        super().__init__(f"{what} is {current}; it cannot become {wanted}")
        self.current, self.wanted = current, wanted


def check_move(current: Status, wanted: Status, what: str) -> None:
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(what, current.value, wanted.value)


def check_branch_move(current: BranchStatus, wanted: BranchStatus, what: str) -> None:
    """A branch ends once: a second outcome for it is a defect, never written."""
    if wanted not in BRANCH_TRANSITIONS[current]:
        raise IllegalTransition(what, current.value, wanted.value)


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 field name
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Options(BaseModel):
    """Per-transaction knobs (seconds; DTM sends whole seconds, Mezzo accepts fractions)."""

    model_config = ConfigDict(extra="ignore")

    retry_interval: float = Field(10.0, gt=0, description="wait before retrying a branch that errored")
    request_timeout: float = Field(8.0, gt=0, description="timeout of one branch call")
    timeout_to_fail: float = Field(0, ge=0, description="abort an unfinished saga/TCC/XA after this long (0: never)")
    retry_limit: int = Field(0, ge=0, le=2**63 - 1,  # the log keeps 64-bit integers
                             description="give up retrying after this many attempts (0: never)")
    wait_result: bool = False
    concurrent: bool = False
    branch_headers: dict[str, str] = Field(default_factory=dict, description="sent with every branch call")

    @field_validator("branch_headers")
    @classmethod
    def _headers_can_go_out(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"header name {name[:60]!r} is not an HTTP token")
            if _BAD_VALUE.search(value) or not value.isascii():
                raise ValueError(f"header {name!r}: a value is printable ASCII without CR or LF")
        return headers


class Step(BaseModel):
    """One saga or message step: an action and (saga) its compensation."""

    action: str
    compensate: str = ""


class GlobalTx(BaseModel):
    gid: str
    mode: Mode
    status: Status
    namespace: str = "default"
    steps: list[Step] = Field(default_factory=list)
    payloads: list[str] = Field(default_factory=list)
    # saga dependency graph: step index -> the steps that must succeed first
    orders: dict[int, list[int]] = Field(default_factory=dict)
    query_prepared: str = ""
    options: Options = Field(default_factory=Options)
    custom_data: str = ""
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    finished: float | None = None
    rollback_reason: str = ""
    attempts: int = 0  # consecutive failed rounds, for backoff
    traceparent: str = ""
    created_by: str = ""

    def out(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def needs(self, index: int) -> list[int]:
        """Steps that must succeed before step ``index`` runs: the previous one unless concurrent."""
        if self.options.concurrent:
            return self.orders.get(index, [])
        return [index - 1] if index > 0 else []


class Branch(BaseModel):
    gid: str
    branch_id: str
    op: str
    url: str
    data: str = ""
    status: BranchStatus = BranchStatus.PREPARED
    attempted: bool = False  # the call was made at least once (a saga compensates only what it tried)
    created: float = Field(default_factory=time.time)
    finished: float | None = None
    result: str = ""

    @property
    def key(self) -> str:
        return f"{self.branch_id}/{self.op}"

    def out(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def step_branches(tx: GlobalTx) -> list[Branch]:
    """The branches a saga or message is made of, from its steps and payloads, as they start out."""
    out = []
    for index, step in enumerate(tx.steps):
        data = tx.payloads[index] if index < len(tx.payloads) else ""
        branch_id = f"{index + 1:02d}"
        out.append(Branch(gid=tx.gid, branch_id=branch_id, op="action", url=step.action, data=data,
                          created=tx.created))
        if tx.mode is Mode.SAGA and step.compensate:
            out.append(Branch(gid=tx.gid, branch_id=branch_id, op="compensate", url=step.compensate, data=data,
                              created=tx.created))
    return out


def derived(tx: GlobalTx, branch: Branch) -> bool:
    """Whether ``branch`` is still what its step says it starts as, so the log need not hold it: a
    saga's or message's branches are stored once they were tried or ended (``TxLog.branches``
    fills in the rest from the steps)."""
    return tx.mode in (Mode.SAGA, Mode.MSG) and not branch.attempted and branch.status is BranchStatus.PREPARED
