"""Gray release targeting, promote and abandon; public namespaces and cluster fallback."""

from __future__ import annotations

import httpx

from mezzo.config.gray import bucket

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"


async def conf(http: httpx.AsyncClient, path: str = APP, **params) -> dict:  # type: ignore[no-untyped-def, type-arg]
    r = await http.get(f"{path}/config", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_gray_by_label_ip_and_sticky_percentage(http: httpx.AsyncClient) -> None:
    await http.put(f"{APP}/items/timeout", json={"value": "1s"})
    await http.put(f"{APP}/items/color", json={"value": "blue"})
    assert (await http.put(f"{APP}/gray")).status_code == 409  # nothing released to branch from
    await http.post(f"{APP}:publish", json={})
    assert (await http.put(f"{APP}/gray")).status_code == 201
    assert (await http.put(f"{APP}/gray")).status_code == 409
    await http.put(f"{APP}/gray/items/timeout", json={"value": "5s"})
    await http.put(f"{APP}/gray/rules", json={"rules": [{"labels": {"canary": "true"}}]})
    assert (await conf(http, label="canary=true"))["configurations"]["timeout"] == "1s"  # gray keys not published yet
    await http.post(f"{APP}/gray:publish")
    canary = await conf(http, label="canary=true")
    assert canary["configurations"] == {"timeout": "5s", "color": "blue"} and canary["releaseKey"].endswith("-gray1")
    assert (await conf(http, label="canary=false"))["configurations"]["timeout"] == "1s"

    # rules apply at once, without publishing anything
    await http.put(f"{APP}/gray/rules", json={"rules": [{"ips": ["10.1.0.0/16"]}, {"clientIds": ["pod-7"]}]})
    assert (await conf(http, ip="10.1.2.3"))["configurations"]["timeout"] == "5s"
    assert (await conf(http, ip="10.2.0.1"))["configurations"]["timeout"] == "1s"
    assert (await conf(http, clientId="pod-7"))["configurations"]["timeout"] == "5s"
    assert (await conf(http, label="canary=true"))["configurations"]["timeout"] == "1s"

    await http.put(f"{APP}/gray/rules", json={"rules": [{"percentage": 30}]})
    path = "shop/default/default/application"
    clients = [f"client-{i}" for i in range(40)]
    for client in clients:
        expected = "5s" if bucket(client, path) < 30 else "1s"
        assert (await conf(http, clientId=client))["configurations"]["timeout"] == expected
    inside = {c for c in clients if bucket(c, path) < 30}
    await http.put(f"{APP}/gray/rules", json={"rules": [{"percentage": 60}]})
    for client in inside:  # raising the percentage keeps everyone who was in
        assert (await conf(http, clientId=client))["configurations"]["timeout"] == "5s"
    bad = await http.put(f"{APP}/gray/rules", json={"rules": [{"ips": ["not-an-ip"]}]})
    assert bad.status_code == 400


async def test_promote_and_abandon(http: httpx.AsyncClient) -> None:
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/a", json={"value": "2"})
    await http.put(f"{APP}/gray/items/b", json={"value": "new"})
    assert (await http.post(f"{APP}/gray:promote")).status_code == 409  # nothing published in the branch
    await http.put(f"{APP}/gray/rules", json={"rules": [{"clientIds": ["c1"]}]})
    await http.post(f"{APP}/gray:publish")
    promoted = (await http.post(f"{APP}/gray:promote")).json()
    assert promoted["kind"] == "promote" and promoted["id"] == 2
    assert (await conf(http))["configurations"] == {"a": "2", "b": "new"}
    assert (await http.get(f"{APP}/gray")).status_code == 404

    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/a", json={"value": "3"})
    await http.put(f"{APP}/gray/rules", json={"rules": [{"clientIds": ["c1"]}]})
    await http.post(f"{APP}/gray:publish")
    assert (await conf(http, clientId="c1"))["configurations"]["a"] == "3"
    assert (await http.delete(f"{APP}/gray")).status_code == 204
    assert (await conf(http, clientId="c1"))["configurations"]["a"] == "2"


async def test_public_namespace_inherited_and_overridden(http: httpx.AsyncClient) -> None:
    common = "/v1/config/apps/platform/envs/default/clusters/default/namespaces/common"
    assert (await http.put(common, json={"public": True})).status_code == 201
    await http.put(f"{common}/items/log.level", json={"value": "info"})
    await http.put(f"{common}/items/region", json={"value": "eu"})
    await http.put(f"{common}/items/api.key", json={"value": "k-123", "secret": True})
    await http.post(f"{common}:publish", json={})
    shop_common = f"{NS}/common"
    r = await http.put(shop_common, json={"public": True})
    assert r.status_code == 409  # the name is taken by platform
    inherited = await http.put(shop_common)
    assert inherited.status_code == 201 and inherited.json()["inherits"] == "platform"
    got = await conf(http, shop_common)
    assert got["configurations"] == {"log.level": "info", "region": "eu", "api.key": "k-123"}
    await http.put(f"{shop_common}/items/log.level", json={"value": "debug"})
    await http.post(f"{shop_common}:publish", json={})
    got = await conf(http, shop_common)
    assert got["configurations"] == {"log.level": "debug", "region": "eu", "api.key": "k-123"}
    assert got["releaseKey"] == "platform-1+shop-1"
    before = got["notificationId"]
    await http.put(f"{common}/items/region", json={"value": "us"})
    await http.post(f"{common}:publish", json={})
    got = await conf(http, shop_common)  # the owner's release reaches every app that inherits
    assert got["configurations"]["region"] == "us" and got["configurations"]["log.level"] == "debug"
    assert got["notificationId"] > before


async def test_cluster_falls_back_to_default(http: httpx.AsyncClient) -> None:
    await http.put(f"{APP}/items/a", json={"value": "default"})
    await http.post(f"{APP}:publish", json={})
    sh = "/v1/config/apps/shop/envs/default/clusters/shanghai/namespaces/application"
    got = await conf(http, sh)
    assert got["configurations"] == {"a": "default"} and got["cluster"] == "default"
    await http.put(f"{sh}/items/a", json={"value": "sh"})
    await http.post(f"{sh}:publish", json={})
    got = await conf(http, sh)
    assert got["configurations"] == {"a": "sh"} and got["cluster"] == "shanghai"
    prod = "/v1/config/apps/shop/envs/prod/clusters/default/namespaces/application"
    assert (await http.get(f"{prod}/config")).status_code == 404  # environments never fall back
