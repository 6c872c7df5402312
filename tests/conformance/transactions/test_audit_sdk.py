"""Audit: the SDK shapes the issue quotes, on their less travelled paths — a message or XA block that
raises rolls back, a message without ``prepare`` is sent at once, and the client's plain calls."""

from __future__ import annotations

import httpx
import pytest

from mezzo.sdk.errors import NotFound
from mezzo.testing.fixtures import RunningNode

from .conftest import FAST, Busi, final_status


class Changed(Exception):
    pass


async def test_message_block_that_raises_after_prepare_is_aborted(txnode: RunningNode, http: httpx.AsyncClient,
                                                                  busi: Busi) -> None:
    async with txnode.client() as client:
        with pytest.raises(Changed):
            async with client.tx.message(f"{busi.url}/query", retry_interval=30) as msg:
                msg.add(f"{busi.url}/notify", {"order": 7})
                await msg.prepare()
                raise Changed  # the local transaction failed
        assert msg.result is not None and msg.result["status"] == "failed"
        assert (await final_status(http, msg.gid or ""))["status"] == "failed"
        with pytest.raises(Changed):
            async with client.tx.message(f"{busi.url}/query") as early:
                early.add(f"{busi.url}/notify", {"order": 8})
                raise Changed  # before prepare: nothing was created
        with pytest.raises(NotFound):
            await client.tx.get(early.gid or "")
    assert busi.names() == []  # neither the branch nor the check-back was called


async def test_message_without_prepare_is_sent_at_once(txnode: RunningNode, http: httpx.AsyncClient,
                                                       busi: Busi) -> None:
    async with txnode.client() as client:
        async with client.tx.message(**FAST) as msg:
            msg.add(f"{busi.url}/notify", {"order": 7})
            msg.add(f"{busi.url}/audit")
        assert (await final_status(http, msg.gid or ""))["status"] == "succeed"
    assert busi.names(msg.gid) == ["notify", "audit"]
    assert [c.body for c in busi.calls] == [{"order": 7}, {}]


async def test_xa_block_that_raises_rolls_back_what_it_prepared(txnode: RunningNode, http: httpx.AsyncClient,
                                                                busi: Busi) -> None:
    async with txnode.client() as client:
        with pytest.raises(Changed):
            async with client.tx.xa(**FAST) as xa:
                await xa.call(f"{busi.url}/move", {"account": 1, "delta": -30})
                await xa.call(f"{busi.url}/move", {"account": 2, "delta": 30})
                raise Changed
        assert (await final_status(http, xa.gid or ""))["status"] == "failed"
    calls = [(c.params["branch_id"], c.params["op"]) for c in busi.calls if c.params.get("gid") == xa.gid]
    assert calls == [("01", "action"), ("02", "action"), ("02", "rollback"), ("01", "rollback")]


async def test_client_calls(txnode: RunningNode, busi: Busi) -> None:
    async with txnode.client() as client:
        gid = await client.tx.new_gid()
        assert gid and gid != await client.tx.new_gid()
        saga = client.tx.saga(gid, **FAST)
        assert saga.add(f"{busi.url}/a", f"{busi.url}/a-undo") == 0
        assert saga.add(f"{busi.url}/b", "", {"n": 2}) == 1
        submitted = await saga.submit()
        assert submitted["gid"] == gid and submitted["payloads"] == ["{}", '{"n":2}']
        prepared = await client.tx.create({"mode": "tcc", "prepare": True, "options": FAST})
        listed = await client.tx.list(mode="tcc")
        assert [t["gid"] for t in listed["items"]] == [prepared["gid"]]
        assert (await client.tx.abort(prepared["gid"]))["status"] == "aborting"


async def test_a_tcc_block_whose_create_is_refused_holds_no_client(txnode: RunningNode) -> None:
    """The TCC/XA block made its HTTP client for the Try calls when built, so a block whose create was
    refused (never entered, so never exited) left that client open."""
    from mezzo.sdk.errors import APIError

    async with txnode.client() as client:
        for block in (client.tx.tcc(retry_interval=-1), client.tx.xa(retry_interval=-1)):
            with pytest.raises(APIError):
                async with block:
                    pass
            assert block._http is None
