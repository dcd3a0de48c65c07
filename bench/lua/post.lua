-- The same POST again and again: path BENCH_PATH, JSON body read from
-- BENCH_BODY_FILE (written by run.py). Built once; wrk resends the string.
local lib = dofile(os.getenv("BENCH_LUA_DIR") .. "/lib.lua")

local req

function init(args)
  local body = lib.read_file(os.getenv("BENCH_BODY_FILE"))
  req = wrk.format("POST", os.getenv("BENCH_PATH"),
    lib.headers({ ["Content-Type"] = "application/json" }), body)
end

function request()
  return req
end
