-- The create floor: the upload the service makes, sent straight to the
-- Storage stand-in. Raw PNG bytes from BENCH_BODY_FILE, a unique object path
-- per request (the service never overwrites: x-upsert false), headers as the
-- service sends them.
local lib = dofile(os.getenv("BENCH_LUA_DIR") .. "/lib.lua")

local body, headers, prefix, tag
local n = 0

function init(args)
  body = lib.read_file(os.getenv("BENCH_BODY_FILE"))
  headers = lib.headers({
    ["Content-Type"] = "image/png",
    ["Cache-Control"] = "max-age=3600",
    ["x-upsert"] = "false",
  })
  prefix = os.getenv("BENCH_PATH_PREFIX")
  tag = os.getenv("BENCH_RUN_TAG") or "run"
end

function request()
  n = n + 1
  local path = string.format("%s%s_t%d_%d_generated_floor.png", prefix, tag, thread_id or 0, n)
  return wrk.format("POST", path, headers, body)
end
