"""Lua for the control path: topics, seek, groups, statistics, retention and time lookups."""

from mezzo.messaging.backends.redis.lua_common import script

# ARGV[4] partitions wanted. Partitions only grow; every existing group gets the new ones.
ENSURE = script(r"""
local old = partitions()
local parts = math.max(old, tonumber(ARGV[4]))
if parts > old then
  for _, group in ipairs(redis.call('HKEYS', registry)) do
    for p = old, parts - 1 do reset_group(group, p, 0) end
  end
  redis.call('HSET', meta, 'partitions', parts)
end
return parts
""")

DROP_TOPIC = script(r"""
local parts = partitions()
for _, group in ipairs(redis.call('HKEYS', registry)) do
  for p = 0, parts - 1 do clear_state(group, p) end
  redis.call('DEL', epochs(group))
end
for p = 0, parts - 1 do redis.call('DEL', stream(p)) end
redis.call('DEL', meta, registry, base .. 'dh', base .. 'dz')
wake()
return parts
""")

# ARGV[4] group, [5] max groups; then partition, offset pairs. Returns partition, applied
# offset pairs; {-1}: no topic, {-2}: too many groups.
SEEK = script(r"""
local group, max_groups = ARGV[4], tonumber(ARGV[5])
local parts = partitions()
if parts == 0 then return {-1} end
local gepoch = redis.call('HGET', registry, group)
if not gepoch then
  gepoch = create_group(group, parts, max_groups)
  if not gepoch then return {-2} end
end
local out = {}
local known = epochs(group)
for i = 6, #ARGV, 2 do
  local p, wanted = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if p < parts then
    local target = math.min(math.max(wanted, first_offset(p)), next_offset(p))
    reset_group(group, p, target)
    redis.call('HSET', known, p, fresh_epoch(redis.call('HGET', known, p) or gepoch))
    out[#out + 1] = p
    out[#out + 1] = target
  end
end
wake()
return out
""")

# ARGV[4] group. Returns 1 when it existed.
DROP_GROUP = script(r"""
local group = ARGV[4]
if redis.call('HEXISTS', registry, group) == 0 then return 0 end
for p = 0, partitions() - 1 do
  local s = stream(p)
  if redis.call('EXISTS', s) == 1 then redis.call('XGROUP', 'DESTROY', s, group) end
  clear_state(group, p)
end
redis.call('DEL', epochs(group))
redis.call('HDEL', registry, group)
wake()
return 1
""")

# Returns first offset, next offset, retained bytes per partition; {} when the topic is gone.
STATS = script(r"""
local out = {}
for p = 0, partitions() - 1 do
  local nxt = next_offset(p)
  local head = redis.call('XRANGE', stream(p), '-', '+', 'COUNT', 1)
  local first, bytes = nxt, 0
  if #head > 0 then
    first = offset_of(head[1][1])
    bytes = tonumber(redis.call('HGET', meta, 'b' .. p) or '0') - tonumber(field(head[1][2], 'c') or '0')
  end
  out[#out + 1] = first
  out[#out + 1] = nxt
  out[#out + 1] = bytes
end
return out
""")

# ARGV[4] group. Returns committed, next, lag, in flight per partition; {-1}: no such group.
GROUP_STATS = script(r"""
local group = ARGV[4]
if redis.call('HEXISTS', registry, group) == 0 then return {-1} end
local out = {}
for p = 0, partitions() - 1 do
  local s = stream(p)
  local first, nxt = first_offset(p), next_offset(p)
  local read, pending, flying, committed = first, 0, 0, nil
  if redis.call('EXISTS', s) == 1 then
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', s)) do
      if field(info, 'name') == group then
        local ms, seq = string.match(field(info, 'last-delivered-id'), '^(%d+)-(%d+)$')
        read = tonumber(ms)
        if tonumber(seq) > 0 then read = read + 1 end
      end
    end
    local summary = redis.call('XPENDING', s, group)
    pending = summary[1]
    if pending > 0 then
      committed = offset_of(summary[2])
      for _, c in ipairs(summary[4]) do
        if c[1] == 'f' then flying = tonumber(c[2]) end
      end
    end
  end
  read = math.min(math.max(read, first), nxt)
  if committed == nil or committed > read then committed = read end
  out[#out + 1] = committed
  out[#out + 1] = nxt
  out[#out + 1] = nxt - read + pending
  out[#out + 1] = flying
end
return out
""")

# ARGV[4] now (ms), [5] retention (ms), [6] bytes per partition (0: no cap). Group state of
# removed entries goes first (acked, keys handed on), then XTRIM MINID. Returns entries removed.
RETENTION = script(r"""
local cutoff, cap = tonumber(ARGV[4]) - tonumber(ARGV[5]), tonumber(ARGV[6])
local groups = redis.call('HKEYS', registry)
local removed = 0

local function forget_below(group, p, target)
  local s, last = stream(p), sid(target - 1)
  while true do
    local pend = redis.call('XPENDING', s, group, '-', last, 500)
    for _, pe in ipairs(pend) do
      local off = string.match(pe[1], '^(%d+)')
      finish(s, group, p, off)
    end
    if #pend < 500 then return end
  end
end

for p = 0, partitions() - 1 do
  local first, nxt = first_offset(p), next_offset(p)
  local target = search(first, nxt, function(o)
    local f = entry(p, o)
    return f == nil or tonumber(field(f, 't') or '0') >= cutoff
  end)
  if cap > 0 then
    local total = tonumber(redis.call('HGET', meta, 'b' .. p) or '0')
    target = math.max(target, search(first, nxt, function(o)
      local f = entry(p, o)
      return f == nil or total - tonumber(field(f, 'c') or '0') <= cap
    end))
  end
  if target > first then
    for _, group in ipairs(groups) do forget_below(group, p, target) end
    redis.call('XTRIM', stream(p), 'MINID', num(target) .. '-0')
    removed = removed + target - first
  end
end
if removed > 0 then wake() end
return removed
""")

# ARGV[4] timestamp (ms). Returns per partition the first offset stored at or after it.
TIMES = script(r"""
local at = tonumber(ARGV[4])
local out = {}
for p = 0, partitions() - 1 do
  out[#out + 1] = search(first_offset(p), next_offset(p), function(o)
    local f = entry(p, o)
    return f == nil or tonumber(field(f, 't') or '0') >= at
  end)
end
return out
""")
