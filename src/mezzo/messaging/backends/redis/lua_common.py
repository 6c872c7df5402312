"""Lua shared by every script of the Redis engine: clock, key names, group state transitions.

Every script is called with KEYS[1] = the topic's meta key (it routes the call to the topic's
slot) and ARGV[1..3] = key base, wake channel, topic name; its own arguments follow.

Numbers that do not fit Lua's ``%.14g`` (times in ms or µs) are always passed to Redis as
strings made by ``num``: handing Redis a Lua number would round it.

A pending entry (in the native PEL) of a group is in one of three states, told apart by the
PEL consumer that owns it:
  ``f``  in flight: handed to a consumer; its ack deadline is its score in ``t``
  ``d``  waiting to be delivered again at its score in ``t`` (nacked, or it now holds its key)
  ``w``  waiting behind an earlier message with the same key (listed in ``q:<key>``)
The PEL delivery counter is the delivery attempt; ``w`` entries are kept at 0 until delivered.
"""

PREAMBLE = r"""
local base, channel, topic = ARGV[1], ARGV[2], ARGV[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local meta = KEYS[1]
local registry = base .. 'groups'

local function num(x) return string.format('%d', x) end
local function sid(o) return string.format('%d-1', o) end
local function offset_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function stream(p) return base .. 's:' .. p end
local function gkey(group, p, what) return base .. 'g:' .. group .. ':' .. p .. ':' .. what end
local function epochs(group) return base .. 'g:' .. group .. ':e' end
local function wake() redis.call('PUBLISH', channel, topic) end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function partitions() return tonumber(redis.call('HGET', meta, 'partitions') or '0') end
local function next_offset(p) return tonumber(redis.call('HGET', meta, 'n' .. p) or '0') end

local function first_offset(p)
  local head = redis.call('XRANGE', stream(p), '-', '+', 'COUNT', 1)
  if #head == 0 then return next_offset(p) end
  return offset_of(head[1][1])
end

local function entry(p, o)
  local found = redis.call('XRANGE', stream(p), sid(o), sid(o))
  if #found == 0 then return nil end
  return found[1][2]
end

-- smallest value in [lo, hi) for which pred holds (pred is false then true), else hi
local function search(lo, hi, pred)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if pred(mid) then hi = mid else lo = mid + 1 end
  end
  return lo
end

local function fresh_epoch(old)
  local e = now_us
  if old and tonumber(old) >= e then e = tonumber(old) + 1 end
  return num(e)
end

local function clear_state(group, p)
  local held = gkey(group, p, 'k')
  for _, key in ipairs(redis.call('HKEYS', held)) do
    redis.call('DEL', gkey(group, p, 'q:' .. key))
  end
  redis.call('DEL', held, gkey(group, p, 't'))
end

-- the native group positioned before offset `at`, with nothing pending
local function reset_group(group, p, at)
  local s = stream(p)
  if redis.call('EXISTS', s) == 1 then redis.call('XGROUP', 'DESTROY', s, group) end
  redis.call('XGROUP', 'CREATE', s, group, num(at) .. '-0', 'MKSTREAM')
  clear_state(group, p)
end

local function create_group(group, parts, max_groups)
  if redis.call('HLEN', registry) >= max_groups then return nil end
  for p = 0, parts - 1 do reset_group(group, p, 0) end
  local epoch = fresh_epoch(nil)
  redis.call('HSET', registry, group, epoch)
  redis.call('DEL', epochs(group))
  return epoch
end

-- `off` stops holding `key`; the next message waiting behind the key becomes due now.
-- nil: off did not hold the key; false: nothing was waiting; true: one was promoted
local function release(s, group, p, key, off)
  local held = gkey(group, p, 'k')
  if redis.call('HGET', held, key) ~= off then return nil end
  local waiting = gkey(group, p, 'q:' .. key)
  while true do
    local nxt = redis.call('LPOP', waiting)
    if not nxt then
      redis.call('HDEL', held, key)
      return false
    end
    if #redis.call('XCLAIM', s, group, 'd', 0, nxt .. '-1', 'JUSTID') > 0 then
      redis.call('HSET', held, key, nxt)
      redis.call('ZADD', gkey(group, p, 't'), num(now), nxt)
      return true
    end
  end
end

-- done with `off` whatever its state (acked, or removed by retention); true when a key moved on
local function finish(s, group, p, off)
  redis.call('XACK', s, group, off .. '-1')
  redis.call('ZREM', gkey(group, p, 't'), off)
  if redis.call('EXISTS', gkey(group, p, 'k')) == 0 then return false end  -- no key held: skip the read
  local fields = entry(p, off)
  local key = fields and field(fields, 'k')
  if not key then return false end
  local moved = release(s, group, p, key, off)
  if moved == nil then redis.call('LREM', gkey(group, p, 'q:' .. key), 1, off) end
  return moved == true
end
"""


def script(body: str) -> str:
    """A complete script: the shared preamble, then ``body``."""
    return PREAMBLE + body
