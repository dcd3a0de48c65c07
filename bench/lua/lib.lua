-- Shared by the bench's wrk scripts (loaded with dofile from each of them).
-- Every wrk thread, and the main state that runs setup()/done(), loads the
-- script; globals below are per Lua state.
--
-- Environment (set by bench/run.py):
--   BENCH_AUTH   value of the Authorization header ("" = none)
--   BENCH_TALLY  "1" = count responses per status in response() (costs the
--                load generator a little: wrk then parses every response)

local lib = {}

function lib.read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local s = f:read("*a")
  f:close()
  return s
end

function lib.read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  assert(#lines > 0, "no lines in " .. tostring(path))
  return lines
end

function lib.headers(extra)
  local h = {}
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then h["Authorization"] = auth end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

-- Per-thread state, copied to the main state by done().
counts = {}
thread_id = 0

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

if os.getenv("BENCH_TALLY") == "1" then
  -- Keys: the status code; a 503 without Retry-After is counted apart,
  -- since back-pressure must come with one; so is a 201 with
  -- Idempotent-Replayed (a replay, no upstream call).
  function response(status, headers, body)
    local key = tostring(status)
    if status == 503 or status == 201 then
      local has_retry, replayed = false, false
      for name, _ in pairs(headers) do
        local n = string.lower(name)
        if n == "retry-after" then has_retry = true end
        if n == "idempotent-replayed" then replayed = true end
      end
      if status == 503 and not has_retry then key = "503-no-retry-after" end
      if status == 201 and replayed then key = "201-replayed" end
    end
    counts[key] = (counts[key] or 0) + 1
  end
end

-- One machine-readable line for run.py, after wrk's own report.
function done(summary, latency, requests)
  local tally = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for k, v in pairs(c) do tally[k] = (tally[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(tally) do
    parts[#parts + 1] = string.format("%q:%d", k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"tally":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    table.concat(parts, ",")))
end

return lib
