"""Rate limiters shared by every node through Redis: one atomic Lua script per algorithm.

Each script reads and writes a single hash key (so it works on Redis Cluster too) and reads
the Redis server's clock (``TIME``), so nodes with skewed clocks still agree. Keys expire
exactly when their state would be the same as a fresh key's, which bounds memory.
Decisions match the in-process limiters in ``mezzo.resilience.ratelimit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mezzo.resilience.ratelimit import RateLimitDecision

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Server time in microseconds; exact in a double until the year 2255.
_NOW_US = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# ARGV: rate (tokens per microsecond), burst, cost. Hash fields: tokens, ts (microseconds).
_TOKEN_BUCKET = (
    _NOW_US
    + """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed, retry = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
local reset = (burst - tokens) / rate
if reset > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.floor(tokens), math.ceil(retry), math.ceil(reset)}
"""
)

# ARGV: limit, window (microseconds), cost. Hash fields: w (window index), n (count).
_FIXED_WINDOW = (
    _NOW_US
    + """
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'n')
local count = 0
if tonumber(state[1]) == index then count = tonumber(state[2]) end
local ends_in = (index + 1) * window - now
if count + cost <= limit then
  count = count + cost
  redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'n', count)
  redis.call('PEXPIRE', KEYS[1], math.ceil(ends_in / 1000))
  return {1, limit - count, 0, ends_in}
end
return {0, limit - count, ends_in, ends_in}
"""
)

# ARGV: limit, window (microseconds), cost. Hash fields: w (window index), cur, prev.
_SLIDING_WINDOW = (
    _NOW_US
    + """
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / window)
local elapsed = now - index * window
local state = redis.call('HMGET', KEYS[1], 'w', 'cur', 'prev')
local w, cur, prev = tonumber(state[1]), tonumber(state[2]) or 0, tonumber(state[3]) or 0
if w ~= index then
  if w == index - 1 then prev = cur else prev = 0 end
  cur = 0
end
local estimate = prev * (1 - elapsed / window) + cur
local allowed = 0
if estimate + cost <= limit then
  allowed = 1
  cur = cur + cost
  estimate = estimate + cost
end
local to_end = window - elapsed
local reset = 0
if cur > 0 then reset = to_end + window elseif prev > 0 then reset = to_end end
local retry = 0
if allowed == 0 then
  local room = limit - cost - cur
  if prev > 0 and room >= 0 then
    retry = window * (1 - room / prev) - elapsed
  else
    retry = to_end + window * math.max(0, 1 - (limit - cost) / cur)
  end
end
if reset > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'cur', cur, 'prev', prev)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.max(0, math.floor(limit - estimate)), math.ceil(retry), math.ceil(reset)}
"""
)


class _RedisLimiter:
    """Runs one algorithm's script; the script returns (allowed, remaining, retry_us, reset_us)."""

    lua: ClassVar[str]
    default_prefix: ClassVar[str]

    def __init__(self, client: Redis, limit: int, prefix: str | None) -> None:
        if limit < 1:
            raise ValueError("a rate limit must allow at least 1 request")
        self.limit = limit
        self.prefix = self.default_prefix if prefix is None else prefix
        self._script = client.register_script(self.lua)

    async def acquire(self, key: str, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units for ``key`` if the shared limit allows; one round trip."""
        if not 1 <= cost <= self.limit:
            raise ValueError(f"cost must be between 1 and the limit ({self.limit})")
        reply = await self._script(keys=[self.prefix + key], args=[*self._args(), cost])
        allowed, remaining, retry_us, reset_us = (int(v) for v in reply)
        return RateLimitDecision(
            bool(allowed), self.limit, remaining, reset_us / 1e6, retry_us / 1e6
        )

    def _args(self) -> list[Any]:
        raise NotImplementedError


class RedisTokenBucket(_RedisLimiter):
    """``TokenBucket`` shared through Redis: ``burst`` tokens, refilled at ``rate`` per second."""

    lua = _TOKEN_BUCKET
    default_prefix = "mezzo:ratelimit:tb:"

    def __init__(
        self, client: Redis, rate: float, burst: int, *, prefix: str | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        super().__init__(client, burst, prefix)
        self.rate = rate

    def _args(self) -> list[Any]:
        return [repr(self.rate / 1e6), self.limit]


class _RedisWindow(_RedisLimiter):
    def __init__(
        self, client: Redis, limit: int, window: float, *, prefix: str | None = None
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        super().__init__(client, limit, prefix)
        self.window = window
        self._window_us = max(1, round(window * 1e6))

    def _args(self) -> list[Any]:
        return [self.limit, self._window_us]


class RedisFixedWindow(_RedisWindow):
    """``FixedWindow`` shared through Redis; windows are aligned to the Redis server clock."""

    lua = _FIXED_WINDOW
    default_prefix = "mezzo:ratelimit:fw:"


class RedisSlidingWindow(_RedisWindow):
    """``SlidingWindow`` (weighted two-window counter) shared through Redis."""

    lua = _SLIDING_WINDOW
    default_prefix = "mezzo:ratelimit:sw:"
