-- wrk script used by every load run of loadtests/run.py.
--
--   wrk -t1 -c64 -d10s -s report.lua URL -- HOSTS_FILE [pods]
--
-- HOSTS_FILE: one Host header per line; requests cycle through them
-- (scenario 2 cycles through all 10,000 hosts; the others use one host, so
-- every scenario drives wrk the same way). With the second argument `pods`,
-- each response's status class and `X-Pod` header (which backend answered)
-- is counted per 100 ms bucket of wall-clock time, for the split and canary
-- scenarios. At the end one line `WRK_JSON {...}` carries the totals,
-- latency percentiles (microseconds) and the buckets.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } lt_timespec;
  int clock_gettime(int clk_id, lt_timespec *tp);
]]
local ts = ffi.new("lt_timespec")
local function now_bucket()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, comparable with Python's time.time()
  return tonumber(ts.tv_sec) * 10 + math.floor(tonumber(ts.tv_nsec) / 1e8)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local reqs = {}
  for line in io.lines(args[1]) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("GET", "/", { ["Host"] = line })
    end
  end
  local n = #reqs
  local i = math.random(n) - 1
  request = function()
    i = i + 1
    if i > n then i = 1 end
    return reqs[i]
  end
  if args[2] == "pods" then
    counts = {}
    response = function(status, headers, body)
      local pod = headers["X-Pod"] or headers["x-pod"] or "none"
      local class = (status >= 200 and status < 300) and "ok" or tostring(status)
      local key = now_bucket() .. " " .. pod .. " " .. class
      counts[key] = (counts[key] or 0) + 1
    end
  end
end

local function json_counts()
  local merged = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for k, v in pairs(c) do merged[k] = (merged[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    parts[#parts + 1] = string.format('"%s": %d', k, v)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, ' ..
    '"buckets": %s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    json_counts()))
end
