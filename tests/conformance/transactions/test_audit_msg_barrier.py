"""Audit: a two-phase message's barrier under concurrency, on SQLite, PostgreSQL and MySQL/MariaDB.

The check-back (``query_prepared_*``) races the message's local transaction and its duplicates: whatever
the interleaving, every check-back's answer agrees with what committed, the local transaction commits at
most once, and once a check-back said "rolled back" it never commits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mezzo.sdk.barrier import DuplicateMessage, MessageRolledBack, message_barrier

from .test_barrier import Boom, Engine, deadlock, engine  # noqa: F401  (the engine fixture)

ops = st.lists(st.sampled_from(["local", "failing-local", "check"]), min_size=1, max_size=6)


async def run(engine: Engine, gid: str, op: str) -> Any:  # noqa: F811
    if op == "check":
        await engine.query_prepared(gid)
        return "committed"
    return await engine.call(message_barrier(gid), fail=op == "failing-local")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
async def test_check_backs_racing_the_local_transaction_agree_with_it(engine: Engine,  # noqa: F811
                                                                      ops: list[str]) -> None:
    gid = uuid.uuid4().hex
    results = await asyncio.gather(*(run(engine, gid, op) for op in ops), return_exceptions=True)
    for op, result in zip(ops, results, strict=True):
        if op == "check":
            assert result == "committed" or isinstance(result, MessageRolledBack) or deadlock(result), result
        else:  # ran, found the message done or given up already, failed itself, or lost a deadlock
            assert result == "done" or isinstance(result, DuplicateMessage | Boom) or deadlock(result), result
    committed = (await engine.effects(gid)).get("msg", 0)
    assert committed <= 1
    assert sum(1 for r in results if r == "done") == committed
    if any(r == "committed" for r in results):
        assert committed == 1
    if any(isinstance(r, MessageRolledBack) for r in results):
        assert committed == 0
    # a check-back now (the coordinator asking again) agrees, and the answer stays
    for _ in range(2):
        try:
            await engine.query_prepared(gid)
            answer = "committed"
        except MessageRolledBack:
            answer = "rolled back"
        assert answer == ("committed" if committed else "rolled back")
    # and a local transaction arriving after that never commits
    try:
        await run(engine, gid, "local")
    except DuplicateMessage:
        pass
    assert (await engine.effects(gid)).get("msg", 0) == committed
