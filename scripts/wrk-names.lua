-- wrk script for scripts/bench.sh: GET /get/file-{i:010} for real names,
-- cycling through i < FILES, with keep-alive (wrk's default).
--
--   FILES=1000000 PREFIX= wrk -t2 -c64 -d10s -s scripts/wrk-names.lua http://127.0.0.1:PORT
--
-- Thread t of T starts at i = t and steps by T, so the threads together
-- walk every name once per cycle, in order, like a listing would.
--
-- DEPTH=k (default 1) pipelines k requests per write (HTTP/1.1
-- pipelining): not what bulkget does, but it shows what the per-request
-- round trip costs the client's kernel and the server.
local files = tonumber(os.getenv("FILES") or "1000000")
local prefix = os.getenv("PREFIX") or ""
local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
local depth = tonumber(os.getenv("DEPTH") or "1")
local counter = 0

local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  i = tid or 0
  step = nthreads
end

local function one()
  local path = string.format("%s/get/file-%010d", prefix, i)
  i = i + step
  if i >= files then i = i - files end
  return wrk.format("GET", path)
end

function request()
  if depth == 1 then return one() end
  local t = {}
  for k = 1, depth do t[k] = one() end
  return table.concat(t)
end

-- Count non-2xx answers so a broken ceiling is visible.
bad = 0
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local errs = 0
  for _, t in ipairs(threads) do errs = errs + (t:get("bad") or 0) end
  io.write(string.format("WRK_RESULT requests=%d secs=%.3f rps=%.0f non2xx=%d errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), errs,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
