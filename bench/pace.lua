-- Fixed-rate pacing for wrk (wrk2 is not in Debian): `wrk -t1 -s pace.lua URL -- RATE`.
--
-- wrk calls delay() before every request on a connection and waits that many milliseconds.
-- One schedule per thread hands out send slots RATE per second apart; a connection that asks
-- gets the next free slot, so the thread's total rate is RATE as long as a connection is free
-- when a slot comes (use more connections than RATE x latency). A server that falls behind is
-- not sent a catch-up burst: the schedule restarts from "now". wrk measures latency from the
-- moment a request is written, so the wait for a slot is not counted (like h2load --rps).
-- Needs wrk built with LuaJIT (Debian's is) for a microsecond clock through the FFI.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])

local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local interval_us = 1000.0
local next_slot_us = nil

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

function init(args)
  local rate = tonumber(args[1] or "1000")
  interval_us = 1e6 / rate
end

function delay()
  local now = now_us()
  if next_slot_us == nil or next_slot_us < now then
    next_slot_us = now
  end
  local wait_ms = math.floor((next_slot_us - now) / 1000.0)
  next_slot_us = next_slot_us + interval_us
  return wait_ms
end
