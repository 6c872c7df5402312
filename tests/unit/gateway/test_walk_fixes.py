"""HashOn's shorthands, and when a Redis-backed plugin setting without a URL is refused."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from mezzo.gateway.model import HashOn, UpstreamSpec
from mezzo.gateway.plugins import validate_plugin_configs
from mezzo.gateway.plugins.shared_redis import NODE_REDIS


def _hash_on(text: str) -> HashOn:
    spec = yaml.safe_load(f"nodes: [{{host: a, port: 80}}]\nloadBalancer: chash\nhashOn: {text}\n")
    return UpstreamSpec.model_validate(spec).hash_on


@pytest.mark.parametrize(("text", "on", "key"), [
    ("{on: header, key: X-User}", "header", "X-User"),  # YAML 1.1: a bare on is true
    ('{"on": cookie, key: sid}', "cookie", "sid"),
    ("consumer", "consumer", None),
    ("uri", "uri", None),
    ("{on: ip}", "ip", None),
])
def test_hash_on_shapes(text: str, on: str, key: str | None) -> None:
    hash_on = _hash_on(text)
    assert (hash_on.on, hash_on.key) == (on, key)
    assert hash_on.model_dump(mode="json", by_alias=True, exclude_unset=True) == (
        {"on": on, "key": key} if key else {"on": on})


@pytest.mark.parametrize(("text", "message"), [
    ("nearest", "Input should be 'header'"),
    ('{on: header, "on": cookie}', 'give "on" once'),
    ("{on: header, key: X-User, extra: 1}", "Extra inputs are not permitted"),
])
def test_hash_on_refusals(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _hash_on(text)


REDIS_CONFIGS = [{"limit-count": {"count": 1, "window": "1s", "policy": "redis"}},
                 {"hmac-auth": {"nonceStore": "redis"}}]


@pytest.mark.parametrize("plugins", REDIS_CONFIGS)
def test_redis_without_url_refused_only_where_the_node_has_no_redis(plugins: dict) -> None:
    assert validate_plugin_configs(plugins) is plugins  # outside an API request: nothing known
    token = NODE_REDIS.set(None)
    try:
        with pytest.raises(ValueError, match="needs redisUrl: this node's MEZZO_CACHE is not redis://"):
            validate_plugin_configs(plugins)
        (name, conf), = plugins.items()
        validate_plugin_configs({name: {**conf, "redisUrl": "redis://r:6379"}})
        validate_plugin_configs({name: {k: v for k, v in conf.items() if k not in ("policy", "nonceStore")}})
    finally:
        NODE_REDIS.reset(token)
    token = NODE_REDIS.set("redis://cache:6379")
    try:
        validate_plugin_configs(plugins)
    finally:
        NODE_REDIS.reset(token)
