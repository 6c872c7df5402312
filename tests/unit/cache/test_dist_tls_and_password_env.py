"""``rediss://`` node URLs and ``passwordEnv``: what the Cache kind accepts and refuses, and what the
node clients are given (end to end in tests/integration/cache_distributed/test_tls_and_password_env.py)."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from mezzo.cache.distributed.backend import NodeAddress, NodeSettingError, NodeTLS
from mezzo.cache.distributed.link import LinkError, NodeLink
from mezzo.cache.distributed.namespaces import shard_configs
from mezzo.cache.distributed.pool import Endpoint, EnvPassword, Shard, client_options
from mezzo.cache.model import CacheSpec, parse_node_url, parse_redis_url

VARIABLE = "MEZZO_TEST_CACHE_NODE_PASSWORD"


def errors(spec: dict) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as info:
        CacheSpec.model_validate(spec)
    return {e["loc"]: e["msg"] for e in info.value.errors()}


def test_rediss_urls_and_their_options() -> None:
    plain = parse_redis_url("rediss://cache.example.com")
    assert (plain.host, plain.port, plain.db, plain.tls) == ("cache.example.com", 6379, 0, NodeTLS())
    assert plain.tls is not None and plain.tls.verify  # system CAs and hostname verification by default
    full = parse_redis_url("rediss://app:p%40ss@h:6390/2?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
                           "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/c.key")
    assert (full.username, full.password, full.db) == ("app", "p@ss", 2)
    assert full.tls == NodeTLS("/etc/ca.pem", True, "/etc/c.pem", "/etc/c.key")
    assert parse_redis_url("rediss://h?ssl_cert_reqs=none").tls == NodeTLS(verify=False)
    assert parse_redis_url("redis://h").tls is None
    assert parse_redis_url("redis://h?client_name=x").tls is None  # ignored, as before
    assert parse_node_url("rediss://h:1", "PW") == NodeAddress("h", 1, tls=NodeTLS(), password_env="PW")
    assert parse_node_url("memcached://h").tls is None
    for bad, reason in [("rediss://h?ssl_cert_reqs=optional", "required (the default) or none"),
                        ("rediss://h?ssl_check_hostname=false", "unknown option ssl_check_hostname"),
                        ("rediss://h?ssl_ca_certs=/a&ssl_ca_certs=/b", "given twice"),
                        ("rediss://h?ssl_ca_certs=", "ssl_ca_certs is empty"),
                        ("rediss://h?ssl_ca_certs", "name=value"),
                        ("rediss://h?ssl_keyfile=/k", "needs ssl_certfile"),
                        ("rediss://h?ssl_cert_reqs=none&ssl_ca_certs=/a", "unused with ssl_cert_reqs=none"),
                        ("redis://h?ssl_ca_certs=/a", "use rediss://"),
                        ("rediss://h/16", "0 to 15"),
                        ("memcacheds://h", "use redis://")]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse_node_url(bad)


def test_the_spec_takes_rediss_everywhere_a_redis_node_goes() -> None:
    ca = "?ssl_ca_certs=/etc/mezzo/redis-ca.pem"
    one = CacheSpec.model_validate({"backend": "redis", "url": f"rediss://:x@h:6380/1{ca}"})
    assert one.seeds()[0].tls == NodeTLS("/etc/mezzo/redis-ca.pem") and one.seeds()[0].password == "x"
    cluster = CacheSpec.model_validate({"backend": "redis-cluster", "urls": [f"rediss://a:1{ca}", f"rediss://b:1{ca}"]})
    assert all(seed.tls == NodeTLS("/etc/mezzo/redis-ca.pem") for seed in cluster.seeds())
    nodes = CacheSpec.model_validate({"backend": "nodes", "nodes": [
        {"url": f"rediss://a:1{ca}", "replica": "rediss://a2:1?ssl_cert_reqs=none"}, {"url": "redis://b:1"}]})
    (first, second) = shard_configs(nodes)
    assert first.name == "a:1" and first.primary.tls == NodeTLS("/etc/mezzo/redis-ca.pem")
    assert first.replica is not None and first.replica.tls == NodeTLS(verify=False) and second.primary.tls is None


def test_bad_tls_options_are_refused_naming_the_field() -> None:
    assert "ssl_cert_reqs" in errors({"backend": "redis", "url": "rediss://h?ssl_cert_reqs=maybe"})[("url",)]
    assert ("urls",) in errors({"backend": "redis-cluster", "urls": ["rediss://a:1?ssl_cert_reqs=off"]})
    assert ("nodes", 0, "url") in errors({"backend": "nodes", "nodes": [{"url": "rediss://a:1?verify=no"}]})
    assert ("nodes", 0, "replica") in errors({"backend": "nodes", "nodes": [
        {"url": "rediss://a:1", "replica": "rediss://b:1?ssl_cert_reqs=maybe"}]})
    # one cluster client, one set of TLS options: seeds that differ are refused
    assert "differ" in errors({"backend": "redis-cluster", "urls": ["rediss://a:1", "redis://b:1"]})[("urls",)]
    assert ("nodes", 0, "url") in errors({"backend": "nodes", "nodes": [{"url": "memcached://a:1?ssl_cert_reqs=none"}]})


def test_password_env_fields() -> None:
    spec = CacheSpec.model_validate({"backend": "redis", "url": "redis://app@h", "passwordEnv": "REDIS_PASSWORD"})
    assert spec.password_env == "REDIS_PASSWORD"
    assert spec.seeds() == [NodeAddress("h", 6379, username="app", password_env="REDIS_PASSWORD")]
    cluster = CacheSpec.model_validate({"backend": "redis-cluster", "urls": ["rediss://a:1"], "passwordEnv": "P"})
    assert cluster.seeds()[0].password_env == "P"
    nodes = CacheSpec.model_validate({"backend": "nodes", "nodes": [
        {"url": "rediss://a:1", "replica": "rediss://a2:1", "passwordEnv": "NODE_A"}, {"url": "redis://:inline@b:1"}]})
    (a, b) = shard_configs(nodes)
    assert a.primary.password_env == a.replica.password_env == "NODE_A"  # type: ignore[union-attr]
    assert (b.primary.password, b.primary.password_env) == ("inline", None)  # URL passwords still work


def test_password_env_is_refused_with_an_inline_password_or_where_it_has_no_meaning() -> None:
    both = errors({"backend": "redis", "url": "redis://app:hunter2@h", "passwordEnv": "P"})
    assert "not both" in both[("passwordEnv",)] and "hunter2" not in str(both)  # the password is masked
    assert ("passwordEnv",) in errors({"backend": "redis-cluster", "urls": ["redis://a:1", "redis://:x@b:1"],
                                       "passwordEnv": "P"})
    assert ("nodes", 0, "passwordEnv") in errors({"backend": "nodes", "nodes": [
        {"url": "redis://:x@a:1", "passwordEnv": "P"}]})
    assert ("nodes", 0, "passwordEnv") in errors({"backend": "nodes", "nodes": [
        {"url": "redis://a:1", "replica": "redis://:x@a2:1", "passwordEnv": "P"}]})
    assert "memcached" in errors({"backend": "nodes", "nodes": [
        {"url": "memcached://a:1", "passwordEnv": "P"}]})[("nodes", 0, "passwordEnv")]
    assert "each node" in errors({"backend": "nodes", "nodes": [{"url": "redis://a:1"}],
                                  "passwordEnv": "P"})[("passwordEnv",)]
    assert ("passwordEnv",) in errors({"passwordEnv": "P"})  # embedded
    for name in ("1ST", "A-B", "A B", ""):
        assert ("passwordEnv",) in errors({"backend": "redis", "url": "redis://h", "passwordEnv": name})


def test_errors_about_a_url_never_show_its_password() -> None:
    for url in ("redis://u:topsecret@h:99999", "redis://u:topsecret@h/99", "rediss://:topsecret@h?bad=1",
                "memcached://u:topsecret@h", "http://u:topsecret@h"):
        with pytest.raises(ValueError) as info:
            parse_node_url(url)
        assert "topsecret" not in str(info.value) and "****" in str(info.value), str(info.value)
    assert "topsecret" not in repr(parse_redis_url("redis://:topsecret@h"))


def test_client_options_for_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client_options(NodeAddress("h", 1, password="p", username="u")) == {"username": "u", "password": "p"}
    assert client_options(NodeAddress("h", 1, username="u")) == {"username": None}  # no AUTH, as the data link
    env = client_options(NodeAddress("h", 1, username="u", password_env=VARIABLE))
    assert list(env) == ["credential_provider"]  # redis-py refuses a password next to a provider
    tls = client_options(NodeAddress("h", 1, tls=NodeTLS("/ca.pem", True, "/c.pem", "/c.key")))
    assert tls == {"username": None, "ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required",
                   "ssl_check_hostname": True, "ssl_certfile": "/c.pem", "ssl_keyfile": "/c.key"}
    off = client_options(NodeAddress("h", 1, tls=NodeTLS(verify=False)))
    assert (off["ssl_cert_reqs"], off["ssl_check_hostname"]) == ("none", False)
    provider = env["credential_provider"]
    assert isinstance(provider, EnvPassword)
    monkeypatch.delenv(VARIABLE, raising=False)
    with pytest.raises(RedisConnectionError, match=f"environment variable {VARIABLE} .* is not set"):
        provider.get_credentials()
    monkeypatch.setenv(VARIABLE, "")
    with pytest.raises(RedisConnectionError, match="is not set"):
        provider.get_credentials()
    monkeypatch.setenv(VARIABLE, "from-env")  # read at each connection, not when the client was made
    assert provider.get_credentials() == ("u", "from-env")
    assert EnvPassword(NodeAddress("h", 1, password_env=VARIABLE)).get_credentials() == ("from-env",)


async def test_an_unset_variable_fails_the_link_before_it_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.delenv(VARIABLE, raising=False)
    link = NodeLink(NodeAddress("127.0.0.1", port, password_env=VARIABLE), timeout=1)
    try:
        with pytest.raises(LinkError, match=f"^environment variable {VARIABLE} \\(passwordEnv of 127.0.0.1:{port}\\)"):
            await link.call([("PING",)])
        assert connections == 0
        monkeypatch.setenv(VARIABLE, "pw")
        assert link.setup() == [("AUTH", "pw")]
    finally:
        link.close()
        server.close()


async def test_tls_files_that_cannot_be_read_are_a_connect_failure_naming_them(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(NodeSettingError, match=re.escape(f"ssl_ca_certs={missing}")):
        NodeTLS(str(missing)).context()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(NodeSettingError, match="ssl_certfile"):
        NodeTLS(certfile=str(garbage)).context()
    link = NodeLink(NodeAddress("127.0.0.1", 1, tls=NodeTLS(str(missing))), timeout=1)
    with pytest.raises(LinkError, match=r"TLS files .* cannot be loaded"):
        await link.call([("PING",)])
    context = NodeTLS(verify=False).context()
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    assert NodeTLS().context().check_hostname


def test_a_failing_node_shows_its_last_error_in_its_status() -> None:
    address = NodeAddress("h", 1)
    shard = Shard("h:1", 1, [Endpoint(address, object(), NodeLink(address, 1))])  # type: ignore[arg-type]
    assert shard.status()["lastError"] is None
    shard.active.last_error = LinkError("environment variable X (passwordEnv of h:1) is not set on this Mezzo node")
    shard.state = "suspect"
    assert shard.status()["lastError"].startswith("environment variable X")
    shard.state = "healthy"
    assert shard.status()["lastError"] is None
