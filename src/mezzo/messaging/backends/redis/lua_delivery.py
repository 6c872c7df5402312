"""Lua for the hot path: publish a batch, fetch deliveries, settle receipts (ack, nack, peek).

One script call per operation: each is atomic on the Redis server, so nodes sharing a group
never see half an operation, and a call costs one round trip whatever the batch size.
"""

from mezzo.messaging.backends.redis.lua_common import script

READ_BUDGET = 200  # entries one fetch may read past (parked behind their keys) per partition
MAX_PENDING = 20_000  # read-but-unfinished entries per group and partition before reading stops

# ARGV[4] dedup window (ms); then per record: partition, id, key ('' = none, else '=' .. key),
# timestamp (ms), payload. Returns per record: partition, offset, duplicate (0/1); {-1}: no topic.
PUBLISH = script(r"""
local window = tonumber(ARGV[4])
local parts = partitions()
if parts == 0 then return {-1} end
local dh, dz = base .. 'dh', base .. 'dz'
if window > 0 then
  local old = redis.call('ZRANGEBYSCORE', dz, '-inf', num(now - window), 'LIMIT', 0, (#ARGV - 4) / 5 + 100)
  for _, id in ipairs(old) do
    redis.call('HDEL', dh, id)
    redis.call('ZREM', dz, id)
  end
end
local nexts, sizes, out = {}, {}, {}
local stored = 0
for i = 5, #ARGV, 5 do
  local p = tonumber(ARGV[i]) % parts
  local rid, karg, ts, payload = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local seen = nil
  if window > 0 then
    seen = redis.call('HGET', dh, rid)
    if seen then
      local at = tonumber(redis.call('ZSCORE', dz, rid) or '0')
      if now - at >= window then seen = nil end
    end
  end
  if seen then
    local sp, so = string.match(seen, '^(%d+):(%d+)$')
    out[#out + 1] = tonumber(sp)
    out[#out + 1] = tonumber(so)
    out[#out + 1] = 1
  else
    if nexts[p] == nil then
      local counters = redis.call('HMGET', meta, 'n' .. p, 'b' .. p)
      nexts[p] = tonumber(counters[1] or '0')
      sizes[p] = tonumber(counters[2] or '0')
    end
    local off = nexts[p]
    local size = #payload + #rid
    if karg == '' then
      redis.call('XADD', stream(p), sid(off), 't', ts, 'c', num(sizes[p]), 'i', rid, 'd', payload)
    else
      local key = string.sub(karg, 2)
      size = size + #key
      redis.call('XADD', stream(p), sid(off), 't', ts, 'c', num(sizes[p]), 'i', rid, 'd', payload, 'k', key)
    end
    nexts[p] = off + 1
    sizes[p] = sizes[p] + size
    if window > 0 then
      redis.call('HSET', dh, rid, p .. ':' .. num(off))
      redis.call('ZADD', dz, num(now), rid)
    end
    out[#out + 1] = p
    out[#out + 1] = off
    out[#out + 1] = 0
    stored = stored + 1
  end
end
for p, n in pairs(nexts) do
  redis.call('HSET', meta, 'n' .. p, num(n), 'b' .. p, num(sizes[p]))
end
if stored > 0 then wake() end
return out
""")

# ARGV[4] group, [5] max messages, [6] ack timeout (ms), [7] expected group epoch ('' = create
# the group if it is missing), [8] max groups, [9] first partition to look at.
# Returns {status, group epoch, ms until the next timer (-1: none), deliveries...} with status
# 0 ok, 1 no topic, 2 too many groups, 3 the group was deleted; each delivery is six values:
# partition, offset, timestamp, attempt, partition epoch, payload.
FETCH = script(r"""
local group, want, ack_ms = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local expect, max_groups, start = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local parts = partitions()
if parts == 0 then return {1} end
local gepoch = redis.call('HGET', registry, group)
if not gepoch then
  if expect ~= '' then return {3} end
  gepoch = create_group(group, parts, max_groups)
  if not gepoch then return {2} end
elseif expect ~= '' and expect ~= gepoch then
  return {3}
end
local out = {0, gepoch, -1}
local got = 0

local function emit(p, off, fields, attempt, epoch)
  out[#out + 1] = p
  out[#out + 1] = tonumber(off)
  out[#out + 1] = tonumber(field(fields, 't') or '0')
  out[#out + 1] = attempt
  out[#out + 1] = epoch
  out[#out + 1] = field(fields, 'd') or ''
  got = got + 1
end

-- timers that are due: ack deadlines passed, nack delays over, keys handed on
local function redeliver(s, p, timers, epoch)
  local due = redis.call('ZRANGEBYSCORE', timers, '-inf', num(now), 'LIMIT', 0, want - got)
  for _, off in ipairs(due) do
    local id = off .. '-1'
    local pend = redis.call('XPENDING', s, group, id, id, 1)
    local claimed = {}
    if #pend == 1 and pend[1][2] ~= 'w' then
      claimed = redis.call('XCLAIM', s, group, 'f', 0, id)
    end
    if claimed[1] then
      redis.call('ZADD', timers, num(now + ack_ms), off)
      emit(p, off, claimed[1][2], pend[1][4] + 1, epoch)
    else
      redis.call('ZREM', timers, off)
    end
  end
end

-- new entries; those whose key is held wait behind it, unseen by consumers
local function read_new(s, p, timers, epoch)
  local pending = redis.call('XPENDING', s, group)[1]
  local budget = """ + str(READ_BUDGET) + r"""
  local held = gkey(group, p, 'k')
  while got < want and budget > 0 and pending < """ + str(MAX_PENDING) + r""" do
    local count = math.min(want - got, budget)
    local batch = redis.call('XREADGROUP', 'GROUP', group, 'f', 'COUNT', count, 'STREAMS', s, '>')
    if not batch then return end
    local entries = batch[1][2]
    for _, e in ipairs(entries) do
      local off = string.match(e[1], '^(%d+)')
      local key = field(e[2], 'k')
      if key and redis.call('HEXISTS', held, key) == 1 then
        redis.call('XCLAIM', s, group, 'w', 0, e[1], 'JUSTID', 'RETRYCOUNT', 0)
        redis.call('RPUSH', gkey(group, p, 'q:' .. key), off)
      else
        if key then redis.call('HSET', held, key, off) end
        redis.call('ZADD', timers, num(now + ack_ms), off)
        emit(p, off, e[2], 1, epoch)
      end
    end
    budget = budget - #entries
    pending = pending + #entries
    if #entries < count then return end
  end
end

for i = 0, parts - 1 do
  if got >= want then break end
  local p = (start + i) % parts
  local s = stream(p)
  local epoch = redis.call('HGET', epochs(group), p) or gepoch
  local timers = gkey(group, p, 't')
  redeliver(s, p, timers, epoch)
  if got < want then read_new(s, p, timers, epoch) end
end

if got == 0 then
  local soonest = nil
  for p = 0, parts - 1 do
    local first = redis.call('ZRANGE', gkey(group, p, 't'), 0, 0, 'WITHSCORES')
    if first[2] then
      local at = tonumber(first[2])
      if soonest == nil or at < soonest then soonest = at end
    end
  end
  if soonest then out[3] = math.max(soonest - now, 0) end
end
return out
""")

# ARGV[4] group, [5] mode (ack | nack | peek), [6] nack delay (ms); then per receipt:
# partition, offset, attempt, epoch. ack and nack return the (1-based) indexes of receipts not
# in flight; peek returns index, timestamp, attempt, payload for each receipt still in flight.
SETTLE = script(r"""
local group, mode, delay = ARGV[4], ARGV[5], tonumber(ARGV[6])
local parts = partitions()
local gepoch = redis.call('HGET', registry, group)
local out = {}
local moved = false
for i = 7, #ARGV, 4 do
  local idx = (i - 7) / 4 + 1
  local p, off, attempt, epoch = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local live = false
  if gepoch and p < parts and (redis.call('HGET', epochs(group), p) or gepoch) == epoch then
    local s, id = stream(p), off .. '-1'
    local pend = redis.call('XPENDING', s, group, id, id, 1)
    live = #pend == 1 and pend[1][2] == 'f' and pend[1][4] == attempt
    if live and mode == 'ack' then
      if finish(s, group, p, off) then moved = true end
    elseif live and mode == 'nack' then
      redis.call('XCLAIM', s, group, 'd', 0, id, 'JUSTID')
      redis.call('ZADD', gkey(group, p, 't'), num(now + delay), off)
      moved = true
    elseif live then
      local fields = entry(p, off)
      if fields then
        out[#out + 1] = idx
        out[#out + 1] = tonumber(field(fields, 't') or '0')
        out[#out + 1] = attempt
        out[#out + 1] = field(fields, 'd') or ''
      end
    end
  end
  if not live and mode ~= 'peek' then out[#out + 1] = idx end
end
if moved then wake() end
return out
""")
