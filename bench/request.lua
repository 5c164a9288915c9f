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
--   BENCH_DELAY_MS pacing: wait this long before each request on a connection (rate-limited pass)
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
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
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

if delay_ms > 0 then
  function delay() return delay_ms end
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
