-- wrk script: send about RATE requests a second in all (wrk2 is not packaged in Debian).
-- Each thread hands out send slots RATE/threads per second apart; wrk waits delay() ms before a
-- request, so a connection that is ready early waits for its slot. Latency is still measured from
-- the actual send (no coordinated-omission correction, unlike wrk2).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clock, timespec *ts);
]]
local ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("RATE") or "1000")
local threads = tonumber(os.getenv("THREADS") or "1")
local interval = threads * 1000 / rate  -- ms between two sends of this thread
local next_slot = nil

function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 50 then
    next_slot = now  -- start, or fell far behind: do not burst to catch up
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  if wait <= 0 then
    return 0
  end
  return wait
end
