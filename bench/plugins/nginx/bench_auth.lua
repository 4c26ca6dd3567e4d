-- bench/run.sh, scenario "auth", the nginx+lua side of bench-auth (bench/plugins/moongate/
-- plugins/bench-auth): the same key lookup and per-consumer counter in access_by_lua, plus
-- what moongate's built-in JSON access log does, in log_by_lua: one cjson-encoded object per
-- request, buffered in a module-level table and appended to the file every FLUSH_LINES lines
-- and every 100 ms (a timer), so there is no syscall per request, as with moongate's log.
--
--   init_by_lua_block        { bench_auth = require "bench_auth"; bench_auth.init(PATH, "bench_counters") }
--   init_worker_by_lua_block { ngx.timer.every(0.1, bench_auth.flush) }
--   access_by_lua_block      { bench_auth.access() }
--   log_by_lua_block         { bench_auth.log() }
local cjson_encode = require("cjson").encode
local ngx = ngx
local var, req = ngx.var, ngx.req
local floor, concat, io_open, tonumber = math.floor, table.concat, io.open, tonumber

local CONSUMERS = 1000
local LIMIT = 1000000000 -- requests per consumer and minute: never reached in the bench
local FLUSH_LINES = 128

local _M = {}

local consumers = {} -- key -> consumer, built once when the module loads (in the master)
for i = 1, CONSUMERS do
  consumers["key-" .. i] = { id = "consumer-" .. i, username = "consumer-" .. i }
end

local dict, path, open_failed
local buf, n = {}, 0

function _M.init(log_path, dict_name)
  path = log_path
  dict = ngx.shared[dict_name]
end

local function deny(status, message)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.print('{"message":"', message, '"}')
  return ngx.exit(status)
end

function _M.access()
  local key = var.http_apikey
  if not key then return deny(401, "Unauthorized") end
  local consumer = consumers[key]
  if not consumer then return deny(401, "Unauthorized") end
  ngx.ctx.consumer = consumer
  local count = dict:incr(consumer.id .. ":" .. floor(ngx.time() / 60), 1, 0, 60)
  if count and count > LIMIT then return deny(429, "API rate limit exceeded") end
end

function _M.flush()
  if n == 0 then return end
  local f, err = io_open(path, "a")
  if f then
    f:write(concat(buf, "\n", 1, n), "\n")
    f:close()
  elseif not open_failed then
    open_failed = true
    ngx.log(ngx.ERR, "bench_auth: cannot open the access log: ", err)
  end
  n = 0
end

function _M.log()
  local consumer = ngx.ctx.consumer
  local start = req.start_time()
  local up_head = var.upstream_header_time
  n = n + 1
  buf[n] = cjson_encode({
    time = start,
    client_ip = var.remote_addr,
    method = req.get_method(),
    path = var.uri,
    status = ngx.status,
    bytes_sent = tonumber(var.bytes_sent),
    upstream_addr = var.upstream_addr or "",
    latency_ms = (ngx.now() - start) * 1000,
    upstream_latency_ms = (up_head and tonumber(up_head) or 0) * 1000,
    request_id = var.request_id,
    route = "all",
    service = "upstream",
    consumer = consumer and consumer.username or nil,
  })
  if n >= FLUSH_LINES then _M.flush() end
end

return _M
