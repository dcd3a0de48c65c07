-- GET requests, rotating through the paths listed in BENCH_PATHS_FILE (one a
-- line: a single path for health and list, the 50 seeded ids for get-by-id).
local lib = dofile(os.getenv("BENCH_LUA_DIR") .. "/lib.lua")

local reqs = {}
local i = 0

function init(args)
  local headers = lib.headers()
  for _, path in ipairs(lib.read_lines(os.getenv("BENCH_PATHS_FILE"))) do
    reqs[#reqs + 1] = wrk.format("GET", path, headers)
  end
  -- Threads start at different ids.
  i = (thread_id or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
