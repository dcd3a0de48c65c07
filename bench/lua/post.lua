-- The same POST again and again: path BENCH_PATH, JSON body read from
-- BENCH_BODY_FILE (written by run.py). Built once; wrk resends the string.
-- With BENCH_IDEMPOTENCY_KEY set, every request carries that one
-- Idempotency-Key: after a first create, each is a replay.
local lib = dofile(os.getenv("BENCH_LUA_DIR") .. "/lib.lua")

local req

function init(args)
  local body = lib.read_file(os.getenv("BENCH_BODY_FILE"))
  local extra = { ["Content-Type"] = "application/json" }
  local key = os.getenv("BENCH_IDEMPOTENCY_KEY")
  if key and key ~= "" then extra["Idempotency-Key"] = key end
  req = wrk.format("POST", os.getenv("BENCH_PATH"), lib.headers(extra), body)
end

function request()
  return req
end
