"""The embedded cache engine: namespaces of strings and hashes with TTLs, a memory limit and
LRU or LFU eviction, and a snapshot so a restart comes back warm.

Everything runs on the event loop thread (no locks): a command is a few dict operations.
Expiry is lazy (an expired key is gone when touched) plus active (a periodic sample of keys
with TTLs, as Redis does), so memory held by expired keys nobody reads is reclaimed too.
Memory is accounted approximately (key + value bytes + a fixed overhead per entry).

SCAN walks keys in the order they were created, not in LRU order (which every read changes):
each new key gets the next place in ``order``, a cursor is a place, and keys gone since leave
holes that are compacted away now and then without moving anyone's place. So a full SCAN returns
every key that existed throughout, however the keys are read meanwhile (a key deleted and made
again may come twice, as Redis allows).

Observers cost nothing until used: ``tracker`` hears of every key that changes or goes (the
near-cache invalidation feed), ``ops`` counts reads and writes in a plain int and one op in
``SAMPLE_EVERY`` feeds the hot-key and big-key sketches (``hotkeys.py``); tags index keys by
label so a whole group can be dropped at once, and ``meta`` holds a short note per key (the
SDK's load time and soft expiry). Tags and meta belong to a value: any write or removal drops them.

LFU is Redis' (evict.c, with its default settings): each key of an ``lfu`` namespace has an 8-bit
logarithmic counter and the minute it was last accessed, packed in one int in ``freq``. A new key
starts at ``LFU_INIT_VAL``; an access first decays the counter by the whole ``LFU_DECAY_TIME``
periods since that minute, then adds 1 with probability 1/((counter - LFU_INIT_VAL) * LFU_LOG_FACTOR
+ 1), so a counter near 255 means about a million recent accesses. Decay is lazy (on access, and
when a key is looked at as an eviction candidate), never a walk over the keys. Eviction looks at
``EVICTION_SAMPLES`` keys drawn at random from SCAN's ``order`` and drops the one with the lowest
decayed counter: the cost of an eviction is its sample, not the number of keys.
"""

from __future__ import annotations

import bisect
import os
import random
import struct
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from mezzo.cache.glob import matcher
from mezzo.cache.hotkeys import KeySampler

OVERHEAD = 64  # bytes per entry beyond key and value, roughly what a dict slot and objects cost
Policy = Literal["lru", "lfu", "noeviction"]
Value = bytes | dict[bytes, bytes]


class CacheError(Exception):
    """A command that cannot apply (wrong type, not an integer, out of memory)."""


WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
OOM = "OOM command not allowed when used memory > 'maxmemory'"
NEVER = 2**63 - 1  # the latest deadline a snapshot holds (ms since the epoch)

# LFU as Redis runs it by default (see the module's docstring); freq[key] = minute << 8 | counter
LFU_INIT_VAL = 5  # a new key's counter, so it can collect some accesses before it is evicted
LFU_LOG_FACTOR = 10  # lfu-log-factor: about 100 hits give 10, 1000 give 18, 100k give 142, 1M give 255
LFU_DECAY_TIME = 1  # lfu-decay-time: minutes per unit of decay (0: counters never decay)
LFU_MAX = 255
EVICTION_SAMPLES = 5  # maxmemory-samples: keys looked at per eviction


class SnapshotDamaged(ValueError):
    """A snapshot that cannot be read to its end: ``loaded`` entries before the damage were kept."""

    def __init__(self, message: str, loaded: int) -> None:
        super().__init__(message)
        self.loaded = loaded


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def lfu_minutes() -> int:
    """LFU's clock: minutes since the epoch, in 16 bits (wrapping every ~45 days, as Redis' does)."""
    return int(time.time()) // 60 & 0xFFFF


def lfu_decayed(packed: int, minute: int) -> int:
    """The counter of ``packed`` less one per ``LFU_DECAY_TIME`` minutes since its minute (at least 0)."""
    counter = packed & 0xFF
    if LFU_DECAY_TIME and counter:
        periods = ((minute - (packed >> 8)) & 0xFFFF) // LFU_DECAY_TIME
        counter = counter - periods if periods < counter else 0
    return counter


def lfu_touched(packed: int | None, minute: int) -> int:
    """``packed`` after one access at ``minute``: decayed, then incremented logarithmically."""
    counter = LFU_INIT_VAL if packed is None else lfu_decayed(packed, minute)
    if counter < LFU_MAX:
        base = counter - LFU_INIT_VAL
        if base <= 0 or random.random() < 1.0 / (base * LFU_LOG_FACTOR + 1):
            counter += 1
    return minute << 8 | counter


def _size(key: bytes, value: Value) -> int:
    if isinstance(value, bytes):
        return len(key) + len(value) + OVERHEAD
    return len(key) + OVERHEAD + sum(len(k) + len(v) + 32 for k, v in value.items())


class Keyspace:
    """One namespace: its entries (in LRU order), TTLs, access counts, LFU counters and counters."""

    def __init__(self, name: str, max_memory: int | None = None, policy: Policy = "lru",
                 default_ttl_ms: int | None = None) -> None:
        self.name = name
        self.data: OrderedDict[bytes, Value] = OrderedDict()
        self.expires: dict[bytes, int] = {}
        self.freq: dict[bytes, int] = {}  # lfu only: minute << 8 | counter (see lfu_touched)
        self.max_memory = max_memory
        self.policy: Policy = policy
        self.default_ttl_ms = default_ttl_ms
        self.memory = 0
        self.hits = self.misses = self.evictions = self.expired = 0
        self.ops = 0
        self.sampler = KeySampler()
        self.next_sample = self.sampler.next_gap()
        # told of every key that changes or goes (None: all of them); set while near caches listen
        self.tracker: Callable[[bytes | None], None] | None = None
        self.tags: dict[str, set[bytes]] = {}
        self.key_tags: dict[bytes, frozenset[str]] = {}
        self.meta: dict[bytes, bytes] = {}
        # SCAN's order: keys by their place (given at creation), with holes where keys went
        self.order: list[bytes] = []
        self.places = array("q")
        self.next_place = 1
        # keys given a TTL, for active expiry to sample by index (holes: keys whose TTL went since)
        self.ttl_keys: list[bytes] = []

    # lookups --------------------------------------------------------------------------------

    def _live(self, key: bytes) -> Value | None:
        value = self.data.get(key)
        if value is None:
            return None
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= now_ms():
            self._remove(key)
            self.expired += 1
            return None
        return value

    def lookup(self, key: bytes, count: bool = True) -> Value | None:
        value = self._live(key)
        if count:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            self.ops += 1
            if self.ops >= self.next_sample:
                self._sample(key, value)
        if value is not None:
            self.data.move_to_end(key)
            if self.policy == "lfu":
                self.freq[key] = lfu_touched(self.freq.get(key), lfu_minutes())
        return value

    def string(self, key: bytes) -> bytes | None:
        value = self.lookup(key)
        if value is not None and not isinstance(value, bytes):
            raise CacheError(WRONGTYPE)
        return value

    def hash(self, key: bytes, create: bool = False) -> dict[bytes, bytes] | None:
        value = self.lookup(key, count=not create)
        if value is None:
            return {} if create else None
        if not isinstance(value, dict):
            raise CacheError(WRONGTYPE)
        return value

    def exists(self, key: bytes) -> bool:
        return self._live(key) is not None

    def peek(self, key: bytes) -> Value | None:
        """The live value, neither counted as a hit or miss nor touched (LRU order and LFU counter
        stay): what ``OBJECT`` looks at, as Redis' lookups without touching do."""
        return self._live(key)

    def frequency(self, key: bytes) -> int:
        """The key's LFU counter, decayed to now, without touching it (what ``OBJECT FREQ`` answers);
        a key without one (written before the namespace turned to ``lfu``) counts as new."""
        packed = self.freq.get(key)
        return LFU_INIT_VAL if packed is None else lfu_decayed(packed, lfu_minutes())

    def ttl_ms(self, key: bytes) -> int:
        """-2: no such key; -1: no TTL; else milliseconds left."""
        if self._live(key) is None:
            return -2
        deadline = self.expires.get(key)
        return -1 if deadline is None else max(deadline - now_ms(), 0)

    # writes ---------------------------------------------------------------------------------

    def store(self, key: bytes, value: Value, ttl_ms: int | None = None, keep_ttl: bool = False,
              at: int | None = None) -> None:
        """Write ``key``; a ``ttl_ms`` of 0 or less (a deadline already past) removes it instead.
        ``at`` gives the deadline itself (ms since the epoch) in place of ``ttl_ms``, kept to the ms."""
        if at is not None:
            ttl_ms = at - now_ms()
        old = self.data.get(key)
        if ttl_ms is not None and ttl_ms <= 0 and not keep_ttl:
            self.ops += 1
            if old is not None:
                self._remove(key)
            return
        size = _size(key, value)
        if self.policy == "noeviction" and self.max_memory is not None:
            grows = size - (_size(key, old) if old is not None else 0)
            if grows > 0 and self.memory + grows > self.max_memory:
                raise CacheError(OOM)  # refused before anything changed: the old value stays
        if old is not None:
            self.memory -= _size(key, old)
        else:
            self._place(key)
        self.data[key] = value
        self.data.move_to_end(key)
        self.memory += size
        if not keep_ttl:
            if ttl_ms is None and self.default_ttl_ms is not None and old is None:
                ttl_ms = self.default_ttl_ms
            if ttl_ms is None:
                self.expires.pop(key, None)
            else:
                self._deadline(key, at if at is not None else now_ms() + ttl_ms)
        if self.policy == "lfu" and (old is None or key not in self.freq):  # an overwrite keeps the counter
            self.freq[key] = lfu_minutes() << 8 | LFU_INIT_VAL
        if self.key_tags or self.meta:
            self._forget_extras(key)
        self.ops += 1
        if self.ops >= self.next_sample:
            self._sample(key, value)
        if self.tracker is not None:
            self.tracker(key)
        self.enforce(protect=key)

    def resized(self, key: bytes, before: int) -> None:
        """A hash changed in place: update the accounting."""
        value = self.data.get(key)
        if value is not None:
            self.memory += _size(key, value) - before
            self.ops += 1
            if self.tracker is not None:
                self.tracker(key)
            self.enforce(protect=key)

    def delete(self, key: bytes) -> bool:
        self.ops += 1
        if self._live(key) is None:
            return False
        self._remove(key)
        return True

    def _remove(self, key: bytes) -> None:
        value = self.data.pop(key, None)
        if value is not None:
            self.memory -= _size(key, value)
        self.expires.pop(key, None)
        self.freq.pop(key, None)
        if self.key_tags or self.meta:
            self._forget_extras(key)
        if self.tracker is not None:
            self.tracker(key)

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        if ttl_ms is None:
            return self._live(key) is not None and self.expires.pop(key, None) is not None
        return self.expire_at(key, now_ms() + ttl_ms)

    def expire_at(self, key: bytes, deadline: int) -> bool:
        """Give a live key the deadline ``deadline`` (ms since the epoch); one already past removes
        it. False when there is no such key."""
        if self._live(key) is None:
            return False
        if deadline <= now_ms():
            self._remove(key)
        else:
            self._deadline(key, deadline)
            if self.tracker is not None:  # a near cache must not outlive the new deadline
                self.tracker(key)
        return True

    def _deadline(self, key: bytes, deadline: int) -> None:
        if key not in self.expires:
            self.ttl_keys.append(key)  # where active expiry samples from
        self.expires[key] = deadline

    def _place(self, key: bytes) -> None:
        """Give a new key the next place in SCAN's order (compacting it once it is half holes)."""
        self.order.append(key)
        self.places.append(self.next_place)
        self.next_place += 1
        if len(self.order) > 2 * len(self.data) + 1024:
            self._compact_order()

    def _compact_order(self) -> None:
        """Drop the holes from SCAN's order, each key keeping its place (so cursors stay valid).
        Called once at least half of it is holes: amortized O(1) per key placed."""
        kept, places, seen, data = [], array("q"), set(), self.data
        for k, place in zip(self.order, self.places, strict=True):
            if k in data and k not in seen:  # a key made again keeps its first place
                seen.add(k)
                kept.append(k)
                places.append(place)
        self.order, self.places = kept, places

    def flush(self) -> None:
        self.order, self.places, self.ttl_keys = [], array("q"), []
        self.data.clear()
        self.expires.clear()
        self.freq.clear()
        self.tags.clear()
        self.key_tags.clear()
        self.meta.clear()
        self.memory = 0
        if self.tracker is not None:
            self.tracker(None)

    # observers ------------------------------------------------------------------------------

    def _sample(self, key: bytes, value: Value | None) -> None:
        self.next_sample = self.ops + self.sampler.next_gap()
        if value is None:
            size = 0
        elif isinstance(value, bytes):
            size = len(key) + len(value) + OVERHEAD
        else:  # a hash: estimated from its length (exact sizes are measured when reported)
            size = len(key) + OVERHEAD + 48 * len(value)
        self.sampler.offer(key, size)

    def size_of(self, key: bytes) -> int | None:
        """Bytes a live key holds by the engine's accounting, None when it is gone."""
        value = self._live(key)
        return None if value is None else _size(key, value)

    def annotate(self, key: bytes, tags: list[str], meta: bytes | None = None) -> None:
        """Label a live key and attach its note (replacing earlier ones); a later write or removal drops them."""
        if self.key_tags or self.meta:
            self._forget_extras(key)
        if key not in self.data:
            return
        if meta is not None:
            self.meta[key] = meta
        if tags:
            self.key_tags[key] = frozenset(tags)
            for name in self.key_tags[key]:
                self.tags.setdefault(name, set()).add(key)

    def _forget_extras(self, key: bytes) -> None:
        self.meta.pop(key, None)
        for name in self.key_tags.pop(key, ()):
            members = self.tags.get(name)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.tags[name]

    def drop_tag(self, name: str) -> int:
        """Delete every live key labelled ``name``; how many went."""
        return sum(self.delete(key) for key in list(self.tags.get(name, ())))

    def over_limit(self) -> bool:
        """A ``noeviction`` namespace over its limit: writes that add are refused (as Redis refuses them)."""
        return self.policy == "noeviction" and self.max_memory is not None and self.memory > self.max_memory

    def enforce(self, protect: bytes | None = None) -> None:
        """Evict until under the memory limit; ``noeviction`` evicts nothing (its writes are refused
        up front, and a hash that grew in place pushes it over until keys go)."""
        if self.max_memory is None or self.memory <= self.max_memory or self.policy == "noeviction":
            return
        while self.memory > self.max_memory and len(self.data) > 1:
            victim = self._victim(protect)
            if victim is None:
                break
            self._remove(victim)
            self.evictions += 1

    def _victim(self, protect: bytes | None) -> bytes | None:
        if self.policy == "lru":
            for key in self.data:  # oldest first
                if key != protect:
                    return key
            return None
        minute, freq = lfu_minutes(), self.freq
        victim, lowest = None, LFU_MAX + 1
        for key in self._candidates(EVICTION_SAMPLES, protect):
            packed = freq.get(key)
            if packed is None:  # written before the namespace turned to lfu: new from now on
                packed = freq[key] = minute << 8 | LFU_INIT_VAL
            counter = lfu_decayed(packed, minute)
            if counter < lowest:
                victim, lowest = key, counter
        return victim

    def _candidates(self, samples: int, protect: bytes | None) -> set[bytes]:
        """Up to ``samples`` distinct live keys other than ``protect``, drawn at random from SCAN's
        ``order``. Holes (keys gone) are kept under half of it (compacted here once they pass that,
        amortized O(1) per key placed), so a bounded number of draws finds the sample; what a tiny
        namespace or bad luck leaves short is made up from the first keys of ``data``. O(samples)
        per eviction, however many keys the namespace holds."""
        data = self.data
        want = min(samples, len(data) - (protect is not None and protect in data))
        picked: set[bytes] = set()
        if want <= 0:
            return picked
        if len(self.order) > 2 * len(data) + 32:
            self._compact_order()
        order, size, draw = self.order, len(self.order), random.random
        for _ in range(8 * samples if size else 0):
            key = order[int(draw() * size)]
            if key in data and key != protect:
                picked.add(key)
                if len(picked) >= want:
                    return picked
        for key in data:
            if key != protect:
                picked.add(key)
                if len(picked) >= want:
                    break
        return picked

    def sweep(self, samples: int = 20) -> int:
        """Active expiry: drop expired keys among a sample of keys with a TTL; repeat while a quarter
        expire. A round costs its sample, not the number of keys with a TTL."""
        removed = 0
        expires, candidates = self.expires, self.ttl_keys
        if len(candidates) > 2 * len(expires) + 1024:  # mostly holes: keep the keys that still have a TTL
            candidates = self.ttl_keys = list(dict.fromkeys(k for k in candidates if k in expires))
        while expires and candidates:
            keys = {candidates[random.randrange(len(candidates))] for _ in range(min(samples, len(expires)))}
            now = now_ms()
            gone = [k for k in keys if expires.get(k, now + 1) <= now]
            for key in gone:
                self._remove(key)
            removed += len(gone)
            self.expired += len(gone)
            if len(gone) < max(1, len(keys) // 4):
                break
        return removed

    def scan(self, cursor: int, match: bytes | None, count: int, kind: str | None = None) -> tuple[int, list[bytes]]:
        """Up to ``count`` places from ``cursor`` on: the live keys there that match, and the next
        cursor (0 at the end). A cursor is a place, so reads and deletes between calls move nothing."""
        order, places = self.order, self.places
        start = bisect.bisect_left(places, cursor)
        end = min(start + count, len(order))
        pattern = matcher(match) if match is not None else None
        out = []
        for key in order[start:end]:
            value = self._live(key)
            if value is None:
                continue
            if pattern is not None and pattern.fullmatch(key) is None:
                continue
            if kind is not None and kind != ("string" if isinstance(value, bytes) else "hash"):
                continue
            out.append(key)
        return (places[end] if end < len(order) else 0), out

    def keys(self, match: bytes | None = None) -> list[bytes]:
        """Every live key matching the glob ``match`` (each once)."""
        pattern = matcher(match) if match is not None else None
        return [key for key in list(self.data) if self._live(key) is not None
                and (pattern is None or pattern.fullmatch(key) is not None)]


class Engine:
    """Every namespace of the node."""

    def __init__(self) -> None:
        self.spaces: dict[str, Keyspace] = {}
        self.tracking: object | None = None  # near-cache listeners (invalidation.Tracking), made on first use

    def space(self, name: str) -> Keyspace:
        ks = self.spaces.get(name)
        if ks is None:
            ks = self.spaces[name] = Keyspace(name)
        return ks

    def sweep(self) -> int:
        """Active expiry of every namespace, and (about once a second) the ops/s and hot-key clocks."""
        spaces = list(self.spaces.values())
        now = time.monotonic()
        for ks in spaces:
            ks.sampler.tick(now, ks.ops)
        return sum(ks.sweep() for ks in spaces)

    # snapshot: [magic][per entry: ns, key, type, ttl, value, tags, meta] length-prefixed ------
    # MZC2 adds tags (a count, then length-prefixed names) and meta (length-prefixed, 0: none)
    # after each entry; MZC1 snapshots still load.

    def save(self, path: Path) -> int:
        tmp = path.with_suffix(".tmp")
        count = 0
        now = now_ms()
        with open(tmp, "wb") as fh:
            fh.write(b"MZC2")
            for ks in self.spaces.values():
                name = ks.name.encode()
                for key, value in ks.data.items():
                    deadline = ks.expires.get(key)
                    if deadline is not None and deadline <= now:
                        continue
                    if isinstance(value, bytes):
                        kind, blob = 0, value
                    else:
                        kind = 1
                        blob = b"".join(struct.pack(">I", len(f)) + f + struct.pack(">I", len(v)) + v
                                        for f, v in value.items())
                    deadline = -1 if deadline is None else min(deadline, NEVER)
                    fh.write(struct.pack(">HIBqI", len(name), len(key), kind, deadline, len(blob)))
                    fh.write(name + key + blob)
                    tags = [t.encode() for t in sorted(ks.key_tags.get(key, ()))]
                    fh.write(struct.pack(">H", len(tags)) + b"".join(struct.pack(">H", len(t)) + t for t in tags))
                    meta = ks.meta.get(key, b"")
                    fh.write(struct.pack(">H", len(meta)) + meta)
                    count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return count

    def load(self, path: Path) -> int:
        """Load a snapshot; raises SnapshotDamaged (keeping what came before the damage) when it
        cannot be read to its end."""
        if not path.exists():
            return 0
        data = path.read_bytes()
        if data[:4] not in (b"MZC1", b"MZC2"):
            raise SnapshotDamaged(f"{path} is not a Mezzo cache snapshot", 0)
        state = [4, 0]  # position, entries loaded
        try:
            self._load(data, state)
        except (struct.error, UnicodeDecodeError, IndexError) as exc:
            raise SnapshotDamaged(f"{path} is damaged at byte {state[0]} ({exc})", state[1]) from None
        if state[0] != len(data):
            raise SnapshotDamaged(f"{path} is damaged at byte {state[0]} (a partial entry)", state[1])
        return state[1]

    def _load(self, data: bytes, state: list[int]) -> None:
        tagged = data[:4] == b"MZC2"
        pos, count, now = 4, 0, now_ms()
        head = struct.calcsize(">HIBqI")
        while pos + head <= len(data):
            nlen, klen, kind, deadline, blen = struct.unpack_from(">HIBqI", data, pos)
            pos += head
            name = data[pos:pos + nlen].decode()
            key = data[pos + nlen:pos + nlen + klen]
            blob = data[pos + nlen + klen:pos + nlen + klen + blen]
            pos += nlen + klen + blen
            if pos > len(data):
                return  # cut inside the entry: state still points at its start
            tags: list[str] = []
            meta: bytes | None = None
            if tagged:
                (ntags,) = struct.unpack_from(">H", data, pos)
                pos += 2
                for _ in range(ntags):
                    (tlen,) = struct.unpack_from(">H", data, pos)
                    tags.append(data[pos + 2:pos + 2 + tlen].decode())
                    pos += 2 + tlen
                (mlen,) = struct.unpack_from(">H", data, pos)
                meta = data[pos + 2:pos + 2 + mlen] or None
                pos += 2 + mlen
                if pos > len(data):
                    return
            if deadline != -1 and deadline <= now:
                state[0] = pos
                continue
            value: Value
            if kind == 0:
                value = blob
            else:
                value, i = {}, 0
                while i < len(blob):
                    (flen,) = struct.unpack_from(">I", blob, i)
                    field = blob[i + 4:i + 4 + flen]
                    i += 4 + flen
                    (vlen,) = struct.unpack_from(">I", blob, i)
                    value[field] = blob[i + 4:i + 4 + vlen]
                    i += 4 + vlen
            ks = self.space(name)
            ks.store(key, value, at=None if deadline == -1 else deadline)  # the deadline itself, to the ms
            ks.annotate(key, tags, meta)
            count += 1
            state[0], state[1] = pos, count
