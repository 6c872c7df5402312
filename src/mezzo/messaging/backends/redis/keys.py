"""Where the Redis engine keeps things: the URL's key prefix and the key names of a topic.

Every key starts with the prefix from the URL (``?prefix=``, default ``mezzo:mq:``), so several
Mezzo installations (and parallel tests) can share one Redis and be removed with ``prefix*``.
All keys of one topic carry the topic in a hash tag (``{namespace/topic}``): they live in one
Redis Cluster slot, which lets one Lua script touch a topic's streams and group state atomically.

Per topic (``B`` = ``<prefix>{<topic>}:``):

====================  ======  =============================================================
``B meta``            hash    ``partitions``, ``spec`` (JSON), ``n<p>`` next offset and
                              ``b<p>`` bytes ever appended to partition ``p``
``B s:<p>``           stream  partition ``p``; offset ``o`` is entry ID ``o-1``
``B dh`` / ``B dz``   hash    dedup window: message id -> ``partition:offset`` / id -> stored at
                      / zset
``B groups``          hash    consumer group -> epoch (server time in µs at creation)
``B g:<g>:e``         hash    partition -> epoch after a seek (receipts carry it)
``B g:<g>:<p>:t``     zset    offset -> when to (re)deliver: ack deadline or nack/promotion time
``B g:<g>:<p>:k``     hash    ordering key -> offset holding it (in flight or waiting to retry)
``B g:<g>:<p>:q:<k>`` list    offsets waiting behind key ``k``, oldest first
====================  ======  =============================================================

and, outside any topic, ``<prefix>topics`` (hash: topic -> spec, for discovery at start) and
the pub/sub channel ``<prefix>wake`` (a topic name is published when its consumers may proceed).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_PREFIX = "mezzo:mq:"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What the broker URL says: the URL for redis-py and the options only Mezzo understands."""

    url: str
    prefix: str
    replicas: int = 0  # WAIT for this many replicas after each publish
    wait_timeout_ms: int = 1000


def parse_url(url: str) -> RedisTarget:
    """Split Mezzo's options (``prefix``, ``replicas``, ``wait_timeout_ms``) off a redis:// URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {"prefix", "replicas", "wait_timeout_ms"}
    options = {k: v for k, v in query if k in ours}
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError("the Redis broker prefix must be non-empty and must not contain { or }")
    return RedisTarget(
        url=urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)),
        prefix=prefix,
        replicas=int(options.get("replicas", "0")),
        wait_timeout_ms=int(options.get("wait_timeout_ms", "1000")),
    )


@dataclass(frozen=True, slots=True)
class TopicKeys:
    """Key names of one topic; Lua scripts get ``base`` and build the rest the same way."""

    base: str

    @classmethod
    def of(cls, prefix: str, topic: str) -> TopicKeys:
        return cls(f"{prefix}{{{topic}}}:")

    @property
    def meta(self) -> str:
        """Declared to every script as KEYS[1]: it routes the call to the topic's slot."""
        return self.base + "meta"

    def stream(self, partition: int) -> str:
        return f"{self.base}s:{partition}"


def registry_key(prefix: str) -> str:
    return prefix + "topics"


def wake_channel(prefix: str) -> str:
    return prefix + "wake"
