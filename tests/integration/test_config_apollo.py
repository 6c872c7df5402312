"""Apollo's client protocol on the config center (``/apollo/{env}/...``): the meta server, ``/configs``
with releaseKey 304s, cluster fallback and gray rules, ``/configfiles``, yaml and json namespaces,
``/notifications/v2`` long polls, and Apollo access keys (signatures, skew, disabled and deleted
keys) next to Mezzo bearer tokens. Requests are made the way Apollo's documented HTTP protocol
says (and its Java client does), signatures computed here from that description."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from mezzo.cli.main import app as cli
from mezzo.testing.fixtures import RunningNode, start_node

BASE = "/v1/config/apps/shop/envs/{env}/clusters/{cluster}/namespaces/{ns}"


@pytest.fixture
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                 timeout=30) as client:
        yield client


@pytest.fixture
async def anon(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    """What an Apollo client sends: no Mezzo token."""
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        yield client


async def publish(http: httpx.AsyncClient, values: dict[str, str], ns: str = "application", env: str = "dev",
                  cluster: str = "default", secret: tuple[str, ...] = ()) -> dict[str, Any]:
    path = BASE.format(env=env, cluster=cluster, ns=ns)
    items = {k: {"value": v, **({"secret": True} if k in secret else {})} for k, v in values.items()}
    r = await http.put(f"{path}/items", json={"items": items})
    assert r.status_code == 204, r.text
    r = await http.post(f"{path}:publish", json={})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def sign(request: httpx.Request, app: str, secret: str, at_ms: int | None = None) -> httpx.Request:
    """Apollo's signature: Base64(HmacSHA1(secret, TIMESTAMP + "\\n" + path?query)) of the URL as sent."""
    stamp = str(int(time.time() * 1000) if at_ms is None else at_ms)
    digest = hmac.new(secret.encode(), f"{stamp}\n{request.url.raw_path.decode()}".encode(), hashlib.sha1).digest()
    request.headers["Authorization"] = f"Apollo {app}:{base64.b64encode(digest).decode()}"
    request.headers["Timestamp"] = stamp
    return request


async def signed_get(client: httpx.AsyncClient, path: str, secret: str, app: str = "shop",
                     at_ms: int | None = None, **params: Any) -> httpx.Response:
    return await client.send(sign(client.build_request("GET", path, params=params or None), app, secret, at_ms))


def notes(*pairs: tuple[str, int]) -> str:
    return json.dumps([{"namespaceName": name, "notificationId": nid} for name, nid in pairs])


async def test_meta_server_answers_with_this_prefix(anon: httpx.AsyncClient, http: httpx.AsyncClient,
                                                    node: RunningNode) -> None:
    r = await anon.get("/apollo/DEV/services/config", params={"appId": "shop", "ip": "10.0.0.1"})
    assert r.status_code == 200  # open, as Apollo's meta server is: it only says where to go
    [service] = r.json()
    assert service["appName"] == "APOLLO-CONFIGSERVICE" and service["instanceId"]
    assert service["homepageUrl"] == f"{node.url}/apollo/DEV/"
    await publish(http, {"a": "1"})
    # the client appends its paths to the homepage URL (as Apollo's clients do, adding the slash if missing)
    r = await http.get(service["homepageUrl"] + "configs/shop/default/application")
    assert r.status_code == 200 and r.json()["configurations"] == {"a": "1"}


async def test_configs_release_key_304_404_and_env_case(http: httpx.AsyncClient) -> None:
    await publish(http, {"db.pool": "10", "db.password": "s3cret"}, secret=("db.password",))
    r = await http.get("/apollo/DEV/configs/shop/default/application")  # Apollo's DEV is Mezzo's dev
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["appId"] == "shop" and body["cluster"] == "default" and body["namespaceName"] == "application"
    assert body["configurations"] == {"db.pool": "10", "db.password": "s3cret"}  # admin token: use right
    key = body["releaseKey"]
    r = await http.get("/apollo/dev/configs/shop/default/application", params={"releaseKey": key, "ip": "1.2.3.4"})
    assert r.status_code == 304 and r.content == b""
    r = await http.get("/apollo/dev/configs/shop/default/application.properties", params={"releaseKey": key})
    assert r.status_code == 304  # Apollo's clients may name a properties namespace with its suffix
    await publish(http, {"db.pool": "20"})
    r = await http.get("/apollo/dev/configs/shop/default/application", params={"releaseKey": key})
    assert r.status_code == 200 and r.json()["configurations"]["db.pool"] == "20" and r.json()["releaseKey"] != key
    for path in ("/apollo/dev/configs/shop/default/nothing", "/apollo/prod/configs/shop/default/application",
                 "/apollo/dev/configs/nobody/default/application", "/apollo/dev/configfiles/json/shop/default/nothing"):
        assert (await http.get(path)).status_code == 404, path


async def test_env_in_another_case(http: httpx.AsyncClient) -> None:
    await publish(http, {"where": "upper"}, env="PRO")  # a Mezzo environment named in upper case
    for env in ("PRO", "pro", "Pro"):
        r = await http.get(f"/apollo/{env}/configs/shop/default/application")
        assert r.status_code == 200 and r.json()["configurations"] == {"where": "upper"}, env
    await publish(http, {"where": "lower"}, env="pro")  # now both exist: each is its own environment
    assert (await http.get("/apollo/pro/configs/shop/default/application")).json()["configurations"]["where"] == "lower"
    assert (await http.get("/apollo/PRO/configs/shop/default/application")).json()["configurations"]["where"] == "upper"


async def test_cluster_fallback_then_own_release_is_not_a_304(http: httpx.AsyncClient) -> None:
    await publish(http, {"region": "any"})
    r = await http.get("/apollo/dev/configs/shop/bj/application")
    assert r.status_code == 200 and r.json()["cluster"] == "default" and r.json()["configurations"] == {"region": "any"}
    fallback_key = r.json()["releaseKey"]
    await publish(http, {"region": "beijing"}, cluster="bj")  # the cluster's release 1, as the default's was
    r = await http.get("/apollo/dev/configs/shop/bj/application", params={"releaseKey": fallback_key})
    assert r.status_code == 200, "the cluster's own release must not look unchanged"
    assert r.json()["cluster"] == "bj" and r.json()["configurations"] == {"region": "beijing"}


async def test_data_center_comes_between_the_cluster_and_default(http: httpx.AsyncClient) -> None:
    """Apollo's order for a client with an ``idc`` (``dataCenter``): its cluster's own release, then
    its data center's, then the default cluster's; the long poll watches the same one."""
    await publish(http, {"region": "any"})
    await publish(http, {"region": "shanghai"}, cluster="sh")
    read = "/apollo/dev/configs/shop/{cluster}/application"
    r = await http.get(read.format(cluster="bj"), params={"dataCenter": "sh"})  # bj has no release
    assert r.json()["cluster"] == "sh" and r.json()["configurations"] == {"region": "shanghai"}
    r = await http.get(read.format(cluster="default"), params={"dataCenter": "sh"})
    assert r.json()["cluster"] == "sh", "Apollo tries the data center before the default cluster too"
    r = await http.get(read.format(cluster="bj"), params={"dataCenter": "gz"})  # no release in gz either
    assert r.json()["cluster"] == "default"
    r = await http.get(read.format(cluster="bj"), params={"dataCenter": "no such/idc"})  # not a name: ignored
    assert r.json()["cluster"] == "default"
    r = await http.get("/apollo/dev/configfiles/json/shop/bj/application", params={"dataCenter": "sh"})
    assert r.json() == {"region": "shanghai"}

    poll = "/apollo/dev/notifications/v2"
    params = {"appId": "shop", "cluster": "bj", "dataCenter": "sh"}
    [seen] = (await http.get(poll, params={**params, "notifications": notes(("application", -1))})).json()
    waiting = asyncio.create_task(http.get(poll, params={**params, "notifications": notes(
        ("application", seen["notificationId"]))}))
    await asyncio.sleep(0.05)
    await publish(http, {"region": "shanghai-2"}, cluster="sh")  # the data center's release wakes it
    r = await asyncio.wait_for(waiting, 30)
    assert r.status_code == 200 and r.json()[0]["notificationId"] > seen["notificationId"]

    await publish(http, {"region": "beijing"}, cluster="bj")  # its own cluster's release wins from now on
    r = await http.get(read.format(cluster="bj"), params={"dataCenter": "sh"})
    assert r.json()["cluster"] == "bj" and r.json()["configurations"] == {"region": "beijing"}


async def test_gray_rules_by_ip_and_label(http: httpx.AsyncClient) -> None:
    await publish(http, {"db.pool": "10"})
    path = BASE.format(env="dev", cluster="default", ns="application")
    assert (await http.put(f"{path}/gray")).status_code == 201
    assert (await http.put(f"{path}/gray/items/db.pool", json={"value": "40"})).status_code == 200
    r = await http.put(f"{path}/gray/rules", json={"rules": [{"ips": ["10.1.0.0/16"]}, {"labels": {"canary": "true"}}]})
    assert r.status_code == 200, r.text
    assert (await http.post(f"{path}/gray:publish")).status_code == 200

    async def pool(**params: str) -> str:
        r = await http.get("/apollo/dev/configs/shop/default/application", params=params)
        assert r.status_code == 200, r.text
        return r.json()["configurations"]["db.pool"]  # type: ignore[no-any-return]

    assert await pool(ip="10.1.2.3") == "40"
    assert await pool(ip="192.168.1.9") == "10"
    assert await pool(ip="192.168.1.9", label="canary") == "40"  # Apollo's label "canary" is canary=true
    r = await http.get("/apollo/dev/configfiles/json/shop/default/application", params={"ip": "10.1.9.9"})
    assert r.json() == {"db.pool": "40"}


async def test_configfiles_and_typed_namespaces(http: httpx.AsyncClient) -> None:
    await publish(http, {"greeting": "hello world", "db.pool": "10"})
    r = await http.get("/apollo/dev/configfiles/json/shop/default/application", params={"ip": "10.0.0.1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"greeting": "hello world", "db.pool": "10"}
    r = await http.get("/apollo/dev/configfiles/shop/default/application")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text.splitlines() == ["db.pool=10", "greeting=hello world"]

    doc = "db:\n  pool: 10\nhosts: [a, b]\n"
    r = await http.put(BASE.format(env="dev", cluster="default", ns="datasource"), json={"format": "yaml"})
    assert r.status_code == 201, r.text
    await publish(http, {"content": doc}, ns="datasource")
    r = await http.get("/apollo/dev/configs/shop/default/datasource.yaml")  # Apollo's name: with its suffix
    assert r.status_code == 200 and r.json()["configurations"] == {"content": doc}
    assert r.json()["namespaceName"] == "datasource.yaml"
    r = await http.get("/apollo/dev/configfiles/raw/shop/default/datasource.yaml")
    assert r.text == doc and r.headers["content-type"].startswith("application/yaml")
    assert (await http.get("/apollo/dev/configs/shop/default/datasource.json")).status_code == 404  # not json

    feature = '{"beta": true}'
    r = await http.put(BASE.format(env="dev", cluster="default", ns="feature.json"), json={"format": "json"})
    assert r.status_code == 201, r.text
    await publish(http, {"content": feature}, ns="feature.json")
    r = await http.get("/apollo/dev/configfiles/json/shop/default/feature.json")
    assert r.json() == {"content": feature}
    r = await http.get("/apollo/dev/configfiles/raw/shop/default/feature.json")
    assert r.text == feature and r.headers["content-type"].startswith("application/json")


async def test_notifications_v2(http: httpx.AsyncClient) -> None:
    await publish(http, {"a": "1"})
    poll = "/apollo/dev/notifications/v2"
    r = await http.get(poll, params={"appId": "shop", "cluster": "default",
                                     "notifications": notes(("application", -1), ("missing", -1))})
    assert r.status_code == 200, r.text
    [first] = r.json()
    assert first["namespaceName"] == "application" and first["notificationId"] > 0
    assert first["messages"] == {"details": {"shop+default+application": first["notificationId"]}}
    current = first["notificationId"]
    r = await http.get(poll, params={"appId": "shop", "cluster": "default", "timeout": "0.2",
                                     "notifications": notes(("application", current))})
    assert r.status_code == 304 and r.content == b""
    r = await http.get(poll, params={"appId": "shop", "notifications": notes(("application.properties", -1))})
    assert r.json()[0]["namespaceName"] == "application"  # answered without the suffix, as Apollo does

    waiting = asyncio.create_task(http.get(poll, params={"appId": "shop", "cluster": "default",
                                                         "notifications": notes(("application", current))}))
    await asyncio.sleep(0.05)  # let the poll park (a publish before that is answered at once all the same)
    await publish(http, {"a": "2"})
    r = await asyncio.wait_for(waiting, 30)
    assert r.status_code == 200 and r.json()[0]["notificationId"] > current
    r = await http.get("/apollo/dev/configs/shop/default/application")
    assert r.json()["configurations"] == {"a": "2"}
    bad = await http.get(poll, params={"appId": "shop", "notifications": "[]"})
    assert bad.status_code == 400


async def test_access_keys(http: httpx.AsyncClient, anon: httpx.AsyncClient, node: RunningNode) -> None:
    await publish(http, {"db.pool": "10", "db.password": "s3cret"}, secret=("db.password",))
    configs = "/apollo/dev/configs/shop/default/application"
    r = await anon.get(configs)
    assert r.status_code == 401 and "access-keys" in r.json()["detail"]  # no key yet: say how to get one

    keys = "/v1/config/apps/shop/access-keys"
    created = await http.post(keys, json={"comment": "java clients"})
    assert created.status_code == 201, created.text
    key = created.json()
    secret, key_id = key["secret"], key["id"]
    assert len(secret) == 32 and key["enabled"] is True and key["comment"] == "java clients"
    listed = (await http.get(keys)).json()["items"]
    assert [k["id"] for k in listed] == [key_id] and all("secret" not in k for k in listed)
    assert secret not in (await http.get("/v1/config/audit", params={"app": "shop"})).text
    assert secret not in (await http.get("/v1/audit")).text

    r = await signed_get(anon, configs, secret, ip="10.0.0.7")
    assert r.status_code == 200, r.text
    assert r.json()["configurations"] == {"db.pool": "10", "db.password": "s3cret"}  # as a developer token reads
    poll = await signed_get(anon, "/apollo/dev/notifications/v2", secret, appId="shop", cluster="default",
                            notifications=notes(("application", -1)))
    assert poll.status_code == 200 and poll.json()[0]["namespaceName"] == "application"
    assert (await signed_get(anon, "/apollo/dev/configfiles/json/shop/default/application", secret)).status_code == 200

    assert (await signed_get(anon, configs, "0" * 32)).status_code == 401  # wrong secret
    assert (await signed_get(anon, configs, secret, app="other")).status_code == 401  # signed as another app
    other = "/apollo/dev/configs/other/default/application"
    assert (await signed_get(anon, other, secret, app="other")).status_code == 401  # a key reads its app only
    skewed = await signed_get(anon, configs, secret, at_ms=int(time.time() * 1000) - 61_000)
    assert skewed.status_code == 401 and "Skewed" in skewed.json()["detail"]
    ahead = await signed_get(anon, configs, secret, at_ms=int(time.time() * 1000) + 61_000)
    assert ahead.status_code == 401
    request = sign(anon.build_request("GET", configs, params={"ip": "10.0.0.7"}), "shop", secret)
    request.url = request.url.copy_with(params={"ip": "10.0.0.8"})  # the query is part of what is signed
    assert (await anon.send(request)).status_code == 401

    assert (await http.post(f"{keys}/{key_id}:disable")).json()["enabled"] is False
    assert (await signed_get(anon, configs, secret)).status_code == 401
    assert (await http.post(f"{keys}/{key_id}:enable")).json()["enabled"] is True
    assert (await signed_get(anon, configs, secret)).status_code == 200
    second = (await http.post(keys, json={"enabled": False})).json()
    assert (await signed_get(anon, configs, second["secret"])).status_code == 401  # created disabled
    assert (await http.delete(f"{keys}/{key_id}")).status_code == 204
    assert (await signed_get(anon, configs, secret)).status_code == 401
    assert (await http.delete(f"{keys}/{key_id}")).status_code == 404

    # bearer tokens still work, and read what they read on Mezzo's own endpoint
    assert (await http.get(configs)).status_code == 200
    async with node.client() as admin:
        viewer = (await admin.tokens.create("viewer", "viewer"))["token"]
    headers = {"Authorization": f"Bearer {viewer}"}
    r = await anon.get(configs, headers=headers)
    assert r.status_code == 200 and r.json()["configurations"]["db.password"] == "******"
    own = await anon.get(BASE.format(env="dev", cluster="default", ns="application") + "/config", headers=headers)
    assert own.json()["configurations"] == r.json()["configurations"]
    assert (await anon.post(keys, headers=headers)).status_code == 403  # managing keys needs write
    assert (await anon.get(configs, headers={"Authorization": "Bearer mzo_nope_nope"})).status_code == 401
    assert (await http.post("/v1/config/apps/nobody/access-keys")).status_code == 404


async def test_access_keys_survive_key_rotation(tmp_path: Path) -> None:
    """Access key secrets are sealed with the node's keyring and re-sealed by :rotate-keys."""
    old, new = base64.b64encode(b"o" * 32).decode(), base64.b64encode(b"n" * 32).decode()
    data = tmp_path / "data"
    running = await start_node(data, secret_keys=old)
    try:
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            await publish(http, {"a": "1"})
            secret = (await http.post("/v1/config/apps/shop/access-keys")).json()["secret"]
    finally:
        await running.node.stop()
    running = await start_node(data, secret_keys=f"{new},{old}")
    try:
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            r = await http.post("/v1/config:rotate-keys")
            assert r.status_code == 200 and r.json()["reencrypted"] >= 1
    finally:
        await running.node.stop()
    running = await start_node(data, secret_keys=new)  # the old key is gone
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as anon:
            r = await signed_get(anon, "/apollo/dev/configs/shop/default/application", secret)
            assert r.status_code == 200 and r.json()["configurations"] == {"a": "1"}
    finally:
        await running.node.stop()


async def test_a_changed_access_key_secret_takes_effect_at_once(node: RunningNode, http: httpx.AsyncClient,
                                                                anon: httpx.AsyncClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets are decrypted once and kept by their ciphertext: a request signed with the same key
    does not decrypt again, and a secret sealed anew under the same key id (what a stored record
    changed behind the API looks like) is used on the next request, the old one refused."""
    from mezzo.config.apollo import _key, _sealed_at
    from mezzo.config.model import AccessKey
    from mezzo.config.service import ConfigService
    from mezzo.jsonutil import dumps, loads
    from mezzo.storage.kv import Put

    await publish(http, {"a": "1"})
    configs = "/apollo/dev/configs/shop/default/application"
    created = (await http.post("/v1/config/apps/shop/access-keys")).json()
    secret, key_id = created["secret"], created["id"]
    svc = node.node.service(ConfigService)
    decrypt, opened = svc.keyring.decrypt, []
    monkeypatch.setattr(svc.keyring, "decrypt", lambda stored, where: opened.append(where) or decrypt(stored, where))
    for _ in range(3):
        assert (await signed_get(anon, configs, secret)).status_code == 200
    assert opened.count(_sealed_at("shop", key_id)) == 1  # decrypted by the first request alone

    kv = await svc.store.get(_key("shop", key_id))
    assert kv is not None
    changed = "f" * 32
    key = AccessKey.model_validate(loads(kv.value))
    key = key.model_copy(update={"secret": svc.keyring.encrypt(changed, _sealed_at("shop", key_id))})
    await svc.store.txn([Put(_key("shop", key_id), dumps(key.out()))])
    assert (await signed_get(anon, configs, secret)).status_code == 401  # never the stale secret
    assert (await signed_get(anon, configs, changed)).status_code == 200


async def test_cli_access_keys(node: RunningNode, http: httpx.AsyncClient) -> None:
    await publish(http, {"a": "1"})
    env = {"MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}

    async def mezzo(*args: str) -> Any:
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["config", "access-key", *args], env=env)
        assert result.exit_code == 0, result.output
        return result

    created = json.loads((await mezzo("create", "shop", "--comment", "ci", "-o", "json")).stdout)
    assert created["secret"] and created["comment"] == "ci"
    table = (await mezzo("list", "shop")).stdout
    assert created["id"] in table and "yes" in table and created["secret"] not in table
    await mezzo("disable", "shop", created["id"])
    assert json.loads((await mezzo("list", "shop", "-o", "json")).stdout)[0]["enabled"] is False
    await mezzo("enable", "shop", created["id"])
    await mezzo("delete", "shop", created["id"])
    assert "has no access key" in (await mezzo("list", "shop")).stdout


async def test_raw_xml_and_labels_answer_as_apollo_does(http: httpx.AsyncClient) -> None:
    """An .xml namespace's document comes as application/xml, and a label Mezzo cannot use (no name)
    does not fail the read: Apollo answers both."""
    doc = "<beans><bean id='a'/></beans>"
    r = await http.put(BASE.format(env="dev", cluster="default", ns="layout"), json={"format": "text"})
    assert r.status_code == 201, r.text
    await publish(http, {"content": doc}, ns="layout")
    r = await http.get("/apollo/dev/configfiles/raw/shop/default/layout.xml")
    assert r.status_code == 200 and r.text == doc and r.headers["content-type"].startswith("application/xml")
    r = await http.get("/apollo/dev/configfiles/raw/shop/default/layout.txt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")

    await publish(http, {"db.pool": "10"})
    for path in ("/apollo/dev/configs/shop/default/application", "/apollo/dev/configfiles/json/shop/default/application"):
        r = await http.get(path, params={"label": "=eu", "ip": "10.0.0.1"})
        assert r.status_code == 200, r.text
