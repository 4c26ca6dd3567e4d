--- rate-limiting: limits how many requests a client makes per second, minute, hour, day,
-- month and year, as Kong 3.x's plugin does (same fields, headers, statuses and body), with
-- counters that are exact where Kong's are not: each request is counted and judged in one
-- atomic step (a shared-dictionary incr on the node, a Lua script in Redis across nodes), so
-- N concurrent requests against a limit of L let exactly min(N, L) through.
-- Who is counted (limit_by) falls back to the client IP, as in Kong, when there is no
-- consumer, credential, header or matching path. Headers: X-RateLimit-Limit-<Window> and
-- X-RateLimit-Remaining-<Window> per window, RateLimit-Limit/-Remaining/-Reset for the window
-- closest to its limit, Retry-After on refusal (none with hide_client_headers).
local policies = require "moongate.plugins.rate-limiting.policies"
local windows = require "moongate.plugins.rate-limiting.windows"
local crypto = require "moongate.crypto"
local cjson = require "cjson.safe"

local bounds, weight, over = windows.bounds, policies.weight, policies.over
local run_local_one = policies.run_local_one
local floor, ceil, max = math.floor, math.ceil, math.max
local tostring, pairs, ipairs, sort, concat = tostring, pairs, ipairs, table.sort, table.concat
local setmetatable = setmetatable

local RateLimiting = { PRIORITY = 910, VERSION = "1.0.0" }

local SYNC_RATE_REALTIME = -1
local MAX_ID = 64   -- longer identifiers (a header's value) are keyed by their digest
local JSON_TYPE = "application/json; charset=utf-8"
local UNEXPECTED = '{"message":"An unexpected error occurred"}'

--------------------------------------------------------------------------------------------
-- Plans: what a conf needs per request, computed once per conf
--------------------------------------------------------------------------------------------

-- A stable text of a flat table of strings and numbers (keys sorted), for the digest.
local function canonical(t)
  local keys, out = {}, {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  for i, k in ipairs(keys) do out[i] = ("%q=%q"):format(k, tostring(t[k])) end
  return concat(out, ",")
end

-- Kong keys counters by the plugin's route and service ids; a plugin here does not know its
-- scope, so instances are told apart by what they count: the same on every worker and every
-- node with the same config, and an explicit `namespace` to share or separate on purpose.
local function namespace(conf)
  if conf.namespace then return conf.namespace end
  local what = {}
  for _, name in ipairs(windows.NAMES) do what[name] = conf[name] end
  what.limit_by, what.header_name, what.path = conf.limit_by, conf.header_name, conf.path
  what.policy, what.algorithm = conf.policy, conf.algorithm
  return crypto.to_hex(crypto.digest("sha256", canonical(what))):sub(1, 16)
end

local identify_by   -- limit_by -> function(conf) -> identifier (below)

local plans = setmetatable({}, { __mode = "k" })

local function plan_for(conf)
  local p = { n = 0, period = {}, limit = {}, limit_str = {}, prefix = {}, ttl = {},
              header_limit = {}, header_remaining = {},
              sliding = conf.algorithm == "sliding", hide = conf.hide_client_headers,
              identify = identify_by[conf.limit_by],
              body = cjson.encode({ message = conf.error_message }),
              status = conf.error_code, sync_rate = conf.sync_rate,
              last_report = -math.huge, unreported = 0,   -- see policies.report
              one = false }
  local ns = namespace(conf)
  for i, name in ipairs(windows.NAMES) do
    local limit = conf[name]
    if limit then
      local n = p.n + 1
      p.n = n
      p.period[n], p.limit[n], p.limit_str[n] = i, limit, tostring(limit)
      p.prefix[n] = "ratelimit:" .. ns .. ":" .. windows.LETTERS[i] .. ":"
      -- a window's counter outlives it by a little; sliding needs it one window more
      p.ttl[n] = windows.MAX_SIZE[i] * (p.sliding and 2 or 1) + 1
      p.header_limit[n] = "X-RateLimit-Limit-" .. windows.TITLES[i]
      p.header_remaining[n] = "X-RateLimit-Remaining-" .. windows.TITLES[i]
    end
  end
  if conf.policy == "redis" then
    local r = conf.redis
    p.redis = r
    -- as Kong: no AUTH without a password (an empty one included), a username only with one
    local password = r.password ~= "" and r.password or nil
    local username = password and r.username ~= "" and r.username or nil
    p.redis_opts = { password = password, username = username, database = r.database,
                     ssl = r.ssl, ssl_verify = r.ssl_verify, server_name = r.server_name }
    if conf.sync_rate ~= SYNC_RATE_REALTIME then
      p.run = policies.run_redis_sync
      p.sync = { entries = {}, dirty = {}, pending = false }
    else
      p.run = policies.run_redis
    end
  else
    p.run = policies.run_local
    p.one = p.n == 1 and not p.sliding
  end
  plans[conf] = p
  return p
end

--------------------------------------------------------------------------------------------
-- Who is counted
--------------------------------------------------------------------------------------------

local function ip()
  return moongate.client.get_forwarded_ip()
end

local service_name = require("moongate.pdk").service_name

identify_by = {
  consumer = function()
    local client = moongate.client
    local c = client.get_consumer() or client.get_credential()
    return c and c.id or ip()
  end,
  credential = function()
    local c = moongate.client.get_credential()
    return c and c.id or ip()
  end,
  ip = ip,
  -- services have no id here: their name (unique in a config); an unnamed one falls back
  service = function()
    local name = service_name()
    if name and name ~= "" then return name end
    return ip()
  end,
  header = function(conf)
    local v = moongate.request.get_header(conf.header_name)
    if v and v ~= "" then
      if #v > MAX_ID then v = "#" .. crypto.to_hex(crypto.digest("sha256", v)) end
      return v
    end
    return ip()
  end,
  path = function(conf)
    local path = moongate.request.get_path()
    if path == conf.path then return path end
    return ip()
  end,
}

--------------------------------------------------------------------------------------------
-- Answers
--------------------------------------------------------------------------------------------

-- When a sliding window lets the next request through, counted from now (seconds): when the
-- previous window's share has decayed enough, or else in the next window.
local function sliding_wait(limit, cur, prev, now, s, e, ps)
  local size = e - s
  local here = cur - 1          -- the refused request was not counted
  if here + 1 <= limit and prev > 0 then
    -- prev * (e - t) / (s - ps) + here + 1 <= limit
    local t = e - (limit - here - 1) * (s - ps) / prev
    if t > now then return t - now end
    return 0
  end
  if limit < 1 then return (e - now) + size end
  if here <= 0 then return e - now end
  -- next window: here * (e + size - t) / size + 1 <= limit
  local t = e + size - (limit - 1) * size / here
  if t < e then t = e end
  return t - now
end

local function fail(conf, p, err)
  if conf.fault_tolerant then
    policies.report(p, "counters unavailable, requests are let through unlimited "
                    .. "(fault_tolerant): ", err)
    return
  end
  policies.report(p, "counters unavailable, requests are answered 500: ", err)
  moongate.response.set_header("Content-Type", JSON_TYPE)
  return moongate.response.exit(500, UNEXPECTED)
end

-- The usual case (local policy, one fixed window) without a loop or a table, so that LuaJIT
-- compiles the whole access phase as one trace: the same answers as the general path.
local function access_one(conf, p)
  local now = moongate.now()
  local cur, stop, e = run_local_one(p, p.identify(conf), now)
  if not cur then return fail(conf, p, stop) end
  local set = moongate.response.set_header
  if not p.hide then
    local limit, limit_str = p.limit[1], p.limit_str[1]
    local rem = stop and (limit - cur + 1) or (limit - cur)
    if rem < 0 then rem = 0 end
    local reset = ceil(e - now)
    if reset < 1 then reset = 1 end
    set(p.header_limit[1], limit_str)
    set(p.header_remaining[1], rem)
    set("RateLimit-Limit", limit_str)
    set("RateLimit-Remaining", rem)
    set("RateLimit-Reset", reset)
    if stop then set("Retry-After", reset) end
  end
  if stop then
    set("Content-Type", JSON_TYPE)
    return moongate.response.exit(p.status, p.body)
  end
end

function RateLimiting:access(conf)
  local p = plans[conf] or plan_for(conf)
  if p.one then return access_one(conf, p) end
  local id = p.identify(conf)
  local now = moongate.now()
  local res, stop = p.run(p, id, now)
  if not res then return fail(conf, p, stop) end
  local set = moongate.response.set_header

  if p.hide then
    if stop then
      set("Content-Type", JSON_TYPE)
      return moongate.response.exit(p.status, p.body)
    end
    return
  end

  -- per window: headers; and the window closest to its limit (a tie goes to the longer one,
  -- as in Kong) for RateLimit-*
  local sliding = p.sliding
  local best, best_rem, retry = 0, 0, 0
  for i = 1, p.n do
    local cur, prev, limit = res[2 * i - 1], res[2 * i], p.limit[i]
    local used = cur
    local s, e, ps
    if sliding then
      s, e, ps = bounds(p.period[i], now)
      used = prev * weight(now, s, e, ps) + cur
    end
    local rem = stop and (limit - used + 1) or (limit - used)
    if sliding then rem = floor(rem) end
    if rem < 0 then rem = 0 end
    set(p.header_limit[i], p.limit_str[i])
    set(p.header_remaining[i], rem)
    if best == 0 or rem <= best_rem then best, best_rem = i, rem end
    if stop and sliding and over(p, i, cur, prev, now, s, e, ps) then
      retry = max(retry, sliding_wait(limit, cur, prev, now, s, e, ps))
    end
  end
  local _, e = bounds(p.period[best], now)
  local reset = stop and sliding and retry or (e - now)
  reset = ceil(reset)
  if reset < 1 then reset = 1 end
  set("RateLimit-Limit", p.limit_str[best])
  set("RateLimit-Remaining", best_rem)
  set("RateLimit-Reset", reset)
  if stop then
    set("Retry-After", reset)
    set("Content-Type", JSON_TYPE)
    return moongate.response.exit(p.status, p.body)
  end
end

return RateLimiting
