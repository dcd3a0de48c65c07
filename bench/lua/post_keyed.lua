-- The POST of post.lua with a fresh Idempotency-Key on every request
-- ({run tag}-t{thread}-{n}: unique across runs, rounds and warm-ups), so each
-- is a first use: the service stores the key and the answer, nothing is
-- replayed. The request is rebuilt each time (the body is copied into it);
-- the floor gets the very same requests.
local lib = dofile(os.getenv("BENCH_LUA_DIR") .. "/lib.lua")

local body, path, headers, tag
local n = 0

function init(args)
  body = lib.read_file(os.getenv("BENCH_BODY_FILE"))
  path = os.getenv("BENCH_PATH")
  headers = lib.headers({ ["Content-Type"] = "application/json" })
  tag = os.getenv("BENCH_RUN_TAG") or "run"
end

function request()
  n = n + 1
  headers["Idempotency-Key"] = string.format("%s-t%d-%d", tag, thread_id or 0, n)
  return wrk.format("POST", path, headers, body)
end
