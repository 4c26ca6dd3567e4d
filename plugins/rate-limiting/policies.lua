--- rate-limiting's counter stores. Each policy counts one request in every configured window
-- of a plan (see handler.lua) and decides in the same step, so that concurrent requests can
-- never both take the last unit of a limit:
--  * local: the node's shared dictionary; one atomic incr per window (all workers see it),
--    rolled back when any window refuses the request, so that refused requests do not count
--    (Kong's semantics: only requests let through are counted).
--  * redis: one EVALSHA per request whose script reads, decides and increments every window
--    atomically in Redis; exact across all the nodes that share the server.
--  * redis with sync_rate > 0 (Kong's batched mode): a window is fetched from Redis once,
--    then counted in the worker and pushed every sync_rate seconds; cheaper, and as Kong's,
--    only approximately exact (other workers' and nodes' requests show up at the next push).
-- Results share one layout: res[2i-1] = the current window's count with this request,
-- res[2i] = the previous window's count (sliding; 0 for fixed windows), and `stop` (true when
-- a window refused the request, which then was not counted).
local windows = require "moongate.plugins.rate-limiting.windows"
local DICT = require("moongate.plugins.rate-limiting.schema").DICT

local bounds, start_string, prev_string = windows.bounds, windows.start_string,
  windows.prev_string
local type, tostring, pairs, next, unpack, find = type, tostring, pairs, next, unpack,
  string.find

local _M = {}

local KEEPALIVE_MS, POOL_SIZE = 60000, 256
local LOG_INTERVAL = 10     -- seconds between two reports of the same kind of failure

-- The weight of the previous window in a sliding estimate at `now`: the share of it that a
-- window of this period's length ending now still covers.
local function weight(now, s, e, ps)
  local w = (e - now) / (s - ps)
  if w < 0 then return 0 elseif w > 1 then return 1 end
  return w
end
_M.weight = weight

-- Would this count (and previous count, sliding) go over the limit? Fixed windows follow
-- Kong: a request passes while the count before it is below the limit.
local function over(p, i, cur, prev, now, s, e, ps)
  if p.sliding then
    return prev * weight(now, s, e, ps) + cur > p.limit[i]
  end
  return cur - 1 >= p.limit[i]
end
_M.over = over

--------------------------------------------------------------------------------------------
-- Failures
--------------------------------------------------------------------------------------------

--- Logs a failure of plan p's counter store, at most once per LOG_INTERVAL seconds per
-- plugin instance and worker: an outage under load is one line every few seconds, not one
-- per request.
function _M.report(p, what, err)
  local now = moongate.now()
  if now - p.last_report < LOG_INTERVAL then
    p.unreported = p.unreported + 1
    return
  end
  local n = p.unreported
  local more = n > 0 and (" (and " .. n .. " more failures since the last report)") or ""
  p.last_report, p.unreported = now, 0
  moongate.log.err(what, err, more)
end

--------------------------------------------------------------------------------------------
-- local
--------------------------------------------------------------------------------------------

local KEYS, RES = {}, {}   -- scratch: the local policy never yields while it uses them
local dict                  -- moongate.shared[DICT], looked up once

local function shared_dict()
  local d = moongate.shared[DICT]
  if not d then
    return nil, "the shared dictionary '" .. DICT .. "' is not declared (shared_dicts)"
  end
  dict = d
  return d
end

function _M.run_local(p, id, now)
  local d = dict
  if not d then
    local err
    d, err = shared_dict()
    if not d then return nil, err end
  end
  local stop = false
  for i = 1, p.n do
    local w = p.period[i]
    local s, e, ps = bounds(w, now)
    local key = p.prefix[i] .. start_string(w, s) .. ":" .. id
    local cur, err = d:incr(key, 1, 0, p.ttl[i])
    if not cur then
      for j = 1, i - 1 do d:incr(KEYS[j], -1) end
      return nil, "could not count in shared dictionary '" .. DICT .. "': " .. tostring(err)
    end
    KEYS[i] = key
    local prev = 0
    if p.sliding then
      prev = d:get(p.prefix[i] .. prev_string(w, ps) .. ":" .. id) or 0
    end
    RES[2 * i - 1], RES[2 * i] = cur, prev
    if not stop and over(p, i, cur, prev, now, s, e, ps) then stop = true end
  end
  if stop then
    for i = 1, p.n do d:incr(KEYS[i], -1) end
  end
  return RES, stop
end

--- run_local for the usual plan, one fixed window, without a loop or a table (the handler's
-- fast path): the count with this request, whether it was refused, and the window's end;
-- or nil and an error.
function _M.run_local_one(p, id, now)
  local d = dict
  if not d then
    local err
    d, err = shared_dict()
    if not d then return nil, err end
  end
  local w = p.period[1]
  local s, e = bounds(w, now)
  local key = p.prefix[1] .. start_string(w, s) .. ":" .. id
  local cur, err = d:incr(key, 1, 0, p.ttl[1])
  if not cur then
    return nil, "could not count in shared dictionary '" .. DICT .. "': " .. tostring(err)
  end
  if cur - 1 >= p.limit[1] then
    d:incr(key, -1)
    return cur, true, e
  end
  return cur, false, e
end

--------------------------------------------------------------------------------------------
-- redis
--------------------------------------------------------------------------------------------

-- KEYS: the n current windows' counters, then (sliding) the n previous ones.
-- ARGV, per window: limit, TTL, weight of the previous window (-1: a fixed window).
-- Reads every window, decides, and only when all agree increments them: atomic in Redis.
local SCRIPT = [[
local n = #ARGV / 3
local out, stop = {}, 0
for i = 1, n do
  local limit, weight = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0') + 1
  local prev = 0
  if weight >= 0 then
    prev = tonumber(redis.call('GET', KEYS[n + i]) or '0')
    if prev * weight + cur > limit then stop = 1 end
  elseif cur - 1 >= limit then
    stop = 1
  end
  out[2 * i - 1], out[2 * i] = cur, prev
end
if stop == 0 then
  for i = 1, n do
    if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[3 * i - 1]) end
  end
end
out[2 * n + 1] = stop
return out
]]

-- KEYS: counters; ARGV, per key: the increment and the TTL for a counter that is new.
local SYNC_SCRIPT = [[
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
end
return out
]]
_M.SCRIPT, _M.SYNC_SCRIPT = SCRIPT, SYNC_SCRIPT

-- Runs a script on the plan's Redis: one round trip on a pooled connection. A pooled
-- connection the server has closed meanwhile (a restart) is retried once on a new one: the
-- server cannot have run the script on a connection it had closed.
local function eval(p, script, nkeys, args, nargs)
  local r = p.redis
  for _ = 1, 2 do
    local red = moongate.redis.new()
    red:set_timeouts(r.timeout, r.timeout, r.timeout)
    local ok, err = red:connect(r.host, r.port, p.redis_opts)
    if not ok then return nil, "could not connect to redis: " .. tostring(err) end
    local reused = red:get_reused_times() or 0
    local res
    res, err = red:eval_cached(script, nkeys, unpack(args, 1, nargs))
    red:set_keepalive(KEEPALIVE_MS, POOL_SIZE)   -- fails (harmlessly) after a failure
    if res ~= nil then return res end
    if reused == 0 or (err ~= "closed" and not find(err, "reset", 1, true)) then
      return nil, "redis: " .. tostring(err)
    end
  end
  return nil, "redis: the connection was closed twice in a row"
end

-- The keys and arguments of SCRIPT for this request, and the current windows' keys.
local function script_args(p, id, now)
  local n = p.n
  local args = {}
  local nkeys = p.sliding and 2 * n or n
  for i = 1, n do
    local w = p.period[i]
    local s, e, ps = bounds(w, now)
    args[i] = p.prefix[i] .. start_string(w, s) .. ":" .. id
    if p.sliding then
      args[n + i] = p.prefix[i] .. prev_string(w, ps) .. ":" .. id
    end
    local base = nkeys + 3 * (i - 1)
    args[base + 1] = p.limit[i]
    args[base + 2] = p.ttl[i]
    args[base + 3] = p.sliding and weight(now, s, e, ps) or -1
  end
  return args, nkeys, nkeys + 3 * n
end

function _M.run_redis(p, id, now)
  local args, nkeys, nargs = script_args(p, id, now)
  local res, err = eval(p, SCRIPT, nkeys, args, nargs)
  if not res then return nil, err end
  if type(res) ~= "table" or #res ~= 2 * p.n + 1 then
    return nil, "redis: unexpected answer to the rate-limiting script"
  end
  return res, res[2 * p.n + 1] == 1, args
end

--------------------------------------------------------------------------------------------
-- redis with sync_rate: counted in the worker, pushed every sync_rate seconds
--------------------------------------------------------------------------------------------

-- p.sync = { entries = { key -> e }, dirty = { key -> e }, pending = bool }, where
-- e = { key, cur (Redis's count when last seen), prev, delta (counted here, not pushed),
--       expire (the window's end), ttl }.

local function flush(premature, p)
  local st = p.sync
  st.pending = false
  if premature then return end
  local batch, n = {}, 0
  for key, e in pairs(st.dirty) do
    n = n + 1
    batch[n] = e
    st.dirty[key] = nil
    if n >= 512 then break end
  end
  if next(st.dirty) ~= nil then   -- more than one batch: the next push follows at once
    st.pending = moongate.timer.at(0, flush, p) and true or false
  end
  if n > 0 then
    local args, sent = {}, {}
    for i = 1, n do
      local e = batch[i]
      sent[i] = e.delta
      args[i], args[n + 2 * i - 1], args[n + 2 * i] = e.key, e.delta, e.ttl
    end
    local res, err = eval(p, SYNC_SCRIPT, n, args, 3 * n)
    for i = 1, n do
      local e = batch[i]
      e.delta = e.delta - sent[i]   -- requests counted during the push stay to push
      if res and type(res[i]) == "number" then
        e.cur = res[i]
      else
        st.entries[e.key] = nil     -- fetched again (or failing again) by the next request
      end
    end
    if not res then _M.report(p, "could not push counters to redis: ", err) end
  end
  -- windows that are over and have nothing left to push
  local now = moongate.now()
  for key, e in pairs(st.entries) do
    if e.expire <= now and e.delta == 0 then st.entries[key] = nil end
  end
end

local CACHED = {}   -- scratch for the cached path, which never yields

function _M.run_redis_sync(p, id, now)
  local st = p.sync
  local entries = st.entries
  local n = p.n
  local fresh = true
  for i = 1, n do
    local w = p.period[i]
    local s = bounds(w, now)
    local e = entries[p.prefix[i] .. start_string(w, s) .. ":" .. id]
    if not e or e.expire <= now then
      fresh = false
      break
    end
    CACHED[i] = e
  end

  if not fresh then
    -- first request of a window in this worker: counted in Redis as in real time
    local res, stop, args = _M.run_redis(p, id, now)
    if not res then return nil, stop end
    for i = 1, n do
      local _, e = bounds(p.period[i], now)
      local key = args[i]
      entries[key] = { key = key, cur = res[2 * i - 1] - (stop and 1 or 0), prev = res[2 * i],
                       delta = 0, expire = e, ttl = p.ttl[i] }
    end
    return res, stop
  end

  local stop = false
  for i = 1, n do
    local e = CACHED[i]
    local cur = e.cur + e.delta + 1
    RES[2 * i - 1], RES[2 * i] = cur, e.prev
    if not stop then
      local s, en, ps = bounds(p.period[i], now)
      if over(p, i, cur, e.prev, now, s, en, ps) then stop = true end
    end
  end
  if not stop then
    local dirty = st.dirty
    for i = 1, n do
      local e = CACHED[i]
      e.delta = e.delta + 1
      dirty[e.key] = e
    end
    if not st.pending then
      local ok, err = moongate.timer.at(p.sync_rate, flush, p)
      if ok then
        st.pending = true
      else
        _M.report(p, "could not schedule the push of counters to redis: ", err)
      end
    end
  end
  return RES, stop
end

return _M
