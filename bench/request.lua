-- wrk script for `make bench`: one request shape per run, configured by environment variables
-- (bench/run.py sets them):
--   BENCH_METHOD   GET or POST
--   BENCH_PATH     request path
--   BENCH_BODY     form body template; {1}, {2}… are the tab-separated fields of the current value
--   BENCH_HEADERS  extra headers, "Name: template" separated by "\n" (same placeholders)
--   BENCH_VALUES   file with one value per line (codes, refresh tokens, cookie<TAB>csrf…); each wrk
--                  thread takes every n-th line and uses each value once (single-use codes and rotating
--                  refresh tokens); unset: the templates are static
--   BENCH_THREADS  number of wrk threads (to slice BENCH_VALUES)
--   BENCH_RATE     pacing: this thread's requests per second, on a fixed schedule (the paced pass); each
--                  response's connection takes the next free slot and waits for it. A connection that finds the
--                  slot past sends at once, and a missed slot is not made up later, so an overloaded server
--                  shows as a rate short of the target, never as a burst
--   BENCH_OUT      where done() writes the JSON summary
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body_t = os.getenv("BENCH_BODY")
local headers_t = os.getenv("BENCH_HEADERS")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local values = nil
local pos = 0
local static_req = nil

local function fill(template, fields)
  return (template:gsub("{(%d)}", function(i) return fields[tonumber(i)] or "" end))
end

local function build(fields)
  local headers = {}
  if body_t then headers["Content-Type"] = "application/x-www-form-urlencoded" end
  if headers_t then
    for line in headers_t:gmatch("[^\n]+") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      headers[name] = fill(value, fields)
    end
  end
  return wrk.format(method, path, headers, body_t and fill(body_t, fields) or nil)
end

function init(args)
  local file = os.getenv("BENCH_VALUES")
  if file then
    local tid = tonumber(wrk.thread:get("tid"))
    local n = tonumber(os.getenv("BENCH_THREADS") or "1")
    values = {}
    local i = 0
    for line in io.lines(file) do
      if i % n == tid then
        local fields = {}
        for f in line:gmatch("[^\t]+") do table.insert(fields, f) end
        table.insert(values, fields)
      end
      i = i + 1
    end
  else
    static_req = build({})
  end
end

function request()
  if static_req then return static_req end
  pos = pos + 1
  if pos > #values then pos = 1 end -- wraps only if too few were minted: then errors show it
  return build(values[pos])
end

if rate > 0 then
  -- wrk's Lua has no wall clock finer than a second: LuaJIT's ffi calls clock_gettime(CLOCK_MONOTONIC).
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local period = 1000 / rate
  local next_slot = nil

  -- wrk calls delay() when a response is complete, before that connection's next request (its first request
  -- goes out at connect, unpaced); the latency it records starts when the request is written, after the wait.
  function delay()
    local now = now_ms()
    local slot = next_slot and math.max(next_slot, now) or now
    next_slot = slot + period
    return math.floor(slot - now + 0.5)
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
  out:close()
end
