"""How Mezzo's names map to JetStream's: every stream, subject and consumer lives under one prefix.

Stream and consumer names may not contain ``.``, ``*``, ``>`` or whitespace, and
topic refs look like ``namespace/topic.name``: a reversible escape turns them into
``[a-z0-9-]`` plus ``_XX`` escapes; names too long for a stream name become a hash
(streams carry the real name in their description, so nothing depends on decoding).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

DEFAULT_PREFIX = "MEZZO"
MAX_TOKEN = 160  # leaves room for the prefix and suffixes within JetStream's 255-character names
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """What a ``nats://`` broker URL says: servers, the namespace prefix, replication and storage."""

    servers: list[str]
    prefix: str = DEFAULT_PREFIX
    replicas: int = 1
    memory: bool = False  # storage=memory: faster, lost when the server restarts


def parse_url(url: str) -> NatsOptions:
    """``nats://[user:pass@]host:port[,host2:port]?prefix=P&replicas=3&storage=file``."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {url!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX.match(prefix):
        raise ValueError(f"NATS prefix {prefix!r}: a letter, then up to 39 letters, digits, '-' or '_'")
    replicas = int(query.pop("replicas", "1"))
    if not 1 <= replicas <= 5:
        raise ValueError("NATS replicas must be between 1 and 5")
    storage = query.pop("storage", "file")
    if storage not in ("file", "memory"):
        raise ValueError("NATS storage is file or memory")
    if query:
        raise ValueError(f"unknown NATS URL parameters: {', '.join(sorted(query))}")
    auth, _, hosts = parts.netloc.rpartition("@")
    servers = [urlunsplit((parts.scheme, f"{auth}@{h}" if auth else h, "", "", "")) for h in hosts.split(",") if h]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return NatsOptions(servers, prefix, replicas, storage == "memory")


def token(name: str) -> str:
    """A stream-name-safe token for ``name``: readable when short, a hash when long."""
    out = "".join(c if c in _PLAIN else "".join(f"_{b:02x}" for b in c.encode()) for c in name)
    if len(out) <= MAX_TOKEN:
        return out
    return "H" + hashlib.sha256(name.encode()).hexdigest()[:40]


def untoken(tok: str) -> str | None:
    """The name behind ``tok``; None for hashed tokens (look at the description instead)."""
    if tok.startswith("H"):
        return None
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), tok).encode("latin-1").decode("utf-8", "replace")


def key_token(key: str) -> str:
    """One subject token per ordering key: JetStream then tracks the last sequence of each key."""
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def id_token(record_id: str) -> str:
    return hashlib.blake2b(record_id.encode(), digest_size=16).hexdigest()


NO_KEY = "_"  # the key token of records without a key


@dataclass(frozen=True, slots=True)
class Names:
    """Every JetStream name of one topic (``t`` is the topic token)."""

    prefix: str
    t: str

    def partition_stream(self, p: int) -> str:
        return f"{self.prefix}_P_{self.t}_{p}"

    def partition_subject(self, p: int, key: str = NO_KEY) -> str:
        return f"{self.prefix}.m.{self.t}.{p}.{key}"

    @property
    def state_stream(self) -> str:
        """Delivery and key records of every group; also holds the topic's settings in its description."""
        return f"{self.prefix}_S_{self.t}"

    @property
    def state_subjects(self) -> str:
        return f"{self.prefix}.s.{self.t}.>"

    def delivery_subject(self, g: str, p: int, seq: int) -> str:
        return f"{self.prefix}.s.{self.t}.d.{g}.{p}.{seq}"

    def key_subject(self, g: str, p: int, key: str) -> str:
        return f"{self.prefix}.s.{self.t}.k.{g}.{p}.{key}"

    def waiter_subject(self, g: str, p: int, seq: int) -> str:
        return f"{self.prefix}.s.{self.t}.w.{g}.{p}.{seq}"

    def group_records(self, g: str, p: int | None = None) -> str:
        return f"{self.prefix}.s.{self.t}.*.{g}.{'>' if p is None else f'{p}.*'}"

    @property
    def ids_stream(self) -> str:
        """Topic-wide dedup claims (id -> partition) when a topic has several partitions."""
        return f"{self.prefix}_I_{self.t}"

    def ids_subject(self, record_id: str) -> str:
        return f"{self.prefix}.i.{self.t}.{id_token(record_id)}"

    @property
    def wake_subject(self) -> str:
        return f"{self.prefix}.w.{self.t}"


def consumer_name(group: str) -> str:
    return f"G_{token(group)}"


def state_stream_prefix(prefix: str) -> str:
    return f"{prefix}_S_"
