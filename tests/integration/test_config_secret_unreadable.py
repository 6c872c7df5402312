"""A released secret that the node cannot decrypt (its key is no longer in the node's keyring):
the client read answers a typed 500 problem naming the key id and the value's place, on Mezzo's
own endpoint and on Apollo's, and a caller that gets secrets masked still reads."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from mezzo.config.secrets import key_id
from mezzo.testing.fixtures import start_node

NS = "/v1/config/apps/shop/envs/dev/clusters/default/namespaces/application"
APOLLO = "/apollo/dev/configs/shop/default/application"


def assert_unreadable(r: httpx.Response, kid: str) -> None:
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/secret-unreadable") and body["status"] == 500
    assert body["title"] == "Secret unreadable"
    assert kid in body["detail"] and "shop/dev/default/application/db.password" in body["detail"]
    assert "s3cret" not in r.text


async def test_secret_sealed_with_a_key_the_node_lacks(tmp_path: Path) -> None:
    old_key, new_key = b"o" * 32, b"n" * 32
    old, new = base64.b64encode(old_key).decode(), base64.b64encode(new_key).decode()
    data = tmp_path / "data"
    running = await start_node(data, secret_keys=old)
    try:
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            items = {"db.pool": {"value": "10"}, "db.password": {"value": "s3cret", "secret": True}}
            assert (await http.put(f"{NS}/items", json={"items": items})).status_code == 204
            assert (await http.post(f"{NS}:publish", json={})).status_code == 200
            r = await http.get(f"{NS}/config")
            assert r.status_code == 200 and r.json()["configurations"]["db.password"] == "s3cret"
            viewer = (await http.post("/v1/tokens", json={"name": "viewer", "role": "viewer"})).json()["token"]
    finally:
        await running.node.stop()

    running = await start_node(data, secret_keys=new)  # the old key is gone (and not rotated away)
    try:
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            assert_unreadable(await http.get(f"{NS}/config"), key_id(old_key))
            assert_unreadable(await http.get(APOLLO), key_id(old_key))  # Apollo's read: the same problem
            # a caller without the use right gets secrets masked: nothing to decrypt, the read works
            masked = await http.get(f"{NS}/config", headers={"Authorization": f"Bearer {viewer}"})
            assert masked.status_code == 200, masked.text
            assert masked.json()["configurations"] == {"db.pool": "10", "db.password": "******"}
            apollo = await http.get(APOLLO, headers={"Authorization": f"Bearer {viewer}"})
            assert apollo.status_code == 200 and apollo.json()["configurations"]["db.password"] == "******"
    finally:
        await running.node.stop()
