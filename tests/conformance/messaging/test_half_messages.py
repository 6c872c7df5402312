"""Transactional (half) messages: invisible until committed; check-back settles forgotten ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mezzo.messaging.half import HalfMessages
from mezzo.node.server import HttpListener, bind
from mezzo.sdk.errors import NotFound
from mezzo.testing.fixtures import RunningNode, wait_for


async def pull_all(client: Any, topic: str, group: str = "g") -> list[Any]:
    sub = client.messaging.subscribe(topic, group)
    return await sub.pull(wait=0.3)


async def test_commit_publishes_rollback_discards(mq: RunningNode) -> None:
    async with mq.client() as client:
        async with client.messaging.transaction("tx", [{"data": 1}, {"data": 2, "key": "k"}]) as tx:
            assert await pull_all(client, "tx") == []  # prepared: invisible
            assert len(tx.message_ids) == 2
        assert [m.data for m in await pull_all(client, "tx")] == [1, 2]

        with pytest.raises(RuntimeError):
            async with client.messaging.transaction("tx", [{"data": 3}]):
                raise RuntimeError("local transaction failed")
        assert await pull_all(client, "tx") == []
        assert (await client.request("GET", "/v1/topics/tx/transactions"))["items"] == []
        with pytest.raises(NotFound):
            await client.request("POST", "/v1/topics/tx/transactions/" + "0" * 32 + ":commit")


class Checker:
    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.asked: list[dict[str, Any]] = []

    async def check(self, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        self.asked.append(body)
        return JSONResponse({"status": self.answers.get(body["transaction"], "UNKNOWN")})


@pytest.fixture
async def checker() -> AsyncIterator[tuple[Checker, str]]:
    state = Checker()
    listener = HttpListener("checker", Starlette(routes=[Route("/check", state.check, methods=["POST"])]),
                            bind("127.0.0.1", 0), drain_timeout=0.5)
    await listener.start()
    try:
        yield state, listener.url + "/check"
    finally:
        await listener.close()


async def test_check_back_commits_rolls_back_and_gives_up(mq: RunningNode, checker: tuple[Checker, str]) -> None:
    state, url = checker
    async with mq.client() as client:
        yes = await client.messaging.transaction("orders", [{"data": "yes"}], check_url=url, check_after="50ms").prepare()
        no = await client.messaging.transaction("orders", [{"data": "no"}], check_url=url, check_after="50ms").prepare()
        lost = await client.messaging.transaction("orders", [{"data": "lost"}], check_url=url, check_after="20ms",
                                                  max_checks=2).prepare()
        state.answers[yes.id] = "COMMIT"  # type: ignore[index]
        state.answers[no.id] = "ROLLBACK"  # type: ignore[index]
        half = mq.node.service(HalfMessages)
        await wait_for(_empty(half), timeout=10)
        assert [m.data for m in await pull_all(client, "orders")] == ["yes"]
        asked = {a["transaction"] for a in state.asked}
        assert {yes.id, no.id, lost.id} <= asked
        assert sum(1 for a in state.asked if a["transaction"] == lost.id) == 2  # maxChecks, then rolled back
        assert state.asked[0]["messages"] and state.asked[0]["topic"] == "orders"


def _empty(half: HalfMessages):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await half.pending("default", "orders") == []
    return check
