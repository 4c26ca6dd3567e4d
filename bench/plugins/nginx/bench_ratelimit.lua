-- bench/run.sh, scenarios "ratelimit" and "ratelimit_redis", the nginx+lua side of moongate's
-- bundled rate-limiting (limit_by ip, one `minute` window set high enough never to refuse):
-- what an OpenResty handler does for the same job. "local": a fixed-window counter in a
-- lua_shared_dict (incr with init and ttl, given back when over the limit); "redis": the same
-- counter in Redis with one EVALSHA per request over a keepalive cosocket (a few lines of
-- RESP, since Debian ships no lua-resty-redis). Both set the response headers moongate's
-- plugin sets: X-RateLimit-Limit/Remaining-Minute and RateLimit-Limit/Remaining/Reset.
--
--   init_by_lua_block   { bench_ratelimit = require "bench_ratelimit"
--                         bench_ratelimit.init("bench_counters", REDIS_PORT) }
--   access_by_lua_block { bench_ratelimit.access_local() }   (or access_redis())
local ngx = ngx
local var = ngx.var
local tonumber, concat = tonumber, table.concat

local LIMIT = 1000000000
local WINDOW = 60

local _M = {}
local dict, redis_port, sha

local SCRIPT = "local c = redis.call('INCR', KEYS[1]) "
  .. "if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return c"

function _M.init(dict_name, port)
  dict = ngx.shared[dict_name]
  redis_port = tonumber(port)
  local raw = ngx.sha1_bin(SCRIPT)
  sha = raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

local function deny()
  ngx.status = 429
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.print('{"message":"API rate limit exceeded"}')
  return ngx.exit(429)
end

local function headers(count, now, window_start)
  local remaining = LIMIT - count
  local h = ngx.header
  h["X-RateLimit-Limit-Minute"] = LIMIT
  h["X-RateLimit-Remaining-Minute"] = remaining
  h["RateLimit-Limit"] = LIMIT
  h["RateLimit-Remaining"] = remaining
  h["RateLimit-Reset"] = window_start + WINDOW - now
end

function _M.access_local()
  local now = ngx.time()
  local start = now - now % WINDOW
  local key = var.remote_addr .. ":minute:" .. start
  local count = dict:incr(key, 1, 0, WINDOW)
  if not count then return ngx.exit(500) end
  if count > LIMIT then
    dict:incr(key, -1)
    return deny()
  end
  headers(count, now, start)
end

local function bulk(s) return "$" .. #s .. "\r\n" .. s .. "\r\n" end

function _M.access_redis()
  local now = ngx.time()
  local start = now - now % WINDOW
  local key = "ratelimit:" .. var.remote_addr .. ":minute:" .. start
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  local ok = sock:connect("127.0.0.1", redis_port)
  if not ok then return ngx.exit(500) end
  local args = concat({ "*5\r\n", bulk("EVALSHA"), bulk(sha), bulk("1"), bulk(key),
                        bulk(tostring(WINDOW)) })
  sock:send(args)
  local line = sock:receive("*l")
  if line and line:sub(1, 9) == "-NOSCRIPT" then
    sock:send(concat({ "*5\r\n", bulk("EVAL"), bulk(SCRIPT), bulk("1"), bulk(key),
                       bulk(tostring(WINDOW)) }))
    line = sock:receive("*l")
  end
  local count = line and line:sub(1, 1) == ":" and tonumber(line:sub(2))
  if not count then return ngx.exit(500) end
  sock:setkeepalive(60000, 64)
  if count > LIMIT then return deny() end
  headers(count, now, start)
end

return _M
