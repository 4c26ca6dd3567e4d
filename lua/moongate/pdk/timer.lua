--- moongate.timer: run a function later, or periodically, outside any request: at(delay, fn,
-- ...) and every(interval, fn, ...). The function gets (premature, ...) like ngx.timer's
-- (premature is always false here: pending timers are dropped when a worker exits). It runs
-- in a coroutine of its own, so it may moongate.sleep; request functions are not available.
local base = require "moongate.core.base"
local phases = require "moongate.phases"
local log = require "moongate.pdk.log"

local C, OK, BUSY = base.C, base.OK, base.BUSY
local type, error, select, unpack = type, error, select, unpack

local _M = {}

local pending = {}   -- id -> { fn, args, n, plugin }
local next_id = 0

local function start(delay, every, fn, ...)
  if type(fn) ~= "function" then error("fn must be a function", 3) end
  next_id = next_id + 1
  local id = next_id
  pending[id] = { fn = fn, args = { ... }, n = select("#", ...), plugin = log.plugin_name,
                  once = every == 0 }
  local rc = C.mg_ffi_timer_start(delay, every, id)
  if rc ~= OK then
    pending[id] = nil
    return nil, rc == BUSY and "too many pending timers (or no event loop here)"
      or "cannot start a timer"
  end
  return true
end

--- Runs fn(premature, ...) once after `delay` seconds. Returns true or nil, err.
-- @phases init_worker, rewrite, access, header_filter, body_filter, log, timer
function _M.at(delay, fn, ...)
  if type(delay) ~= "number" or delay < 0 then error("delay must be a non-negative number", 2) end
  return start(delay, 0, fn, ...)
end

--- Runs fn(premature, ...) every `interval` seconds (a run still waiting when the next is due
-- makes that tick skip). Returns true or nil, err.
-- @phases init_worker, rewrite, access, header_filter, body_filter, log, timer
function _M.every(interval, fn, ...)
  if type(interval) ~= "number" or interval <= 0 then
    error("interval must be a positive number", 2)
  end
  return start(interval, interval, fn, ...)
end

--- Runs timer `id` (called by the runtime in the timer's coroutine).
function _M.run(id, once)
  local t = pending[id]
  if not t then return end
  if once then pending[id] = nil end
  phases.current = phases.TIMER
  log.plugin_name = t.plugin
  local ok, err = xpcall(t.fn, debug.traceback, false, unpack(t.args, 1, t.n))
  if not ok then
    local msg = (t.plugin and ("[" .. t.plugin .. "] ") or "") .. "timer failed: " .. tostring(err)
    C.mg_ffi_log(4, msg, #msg)
  end
  log.plugin_name = nil
  phases.current = 0
end

--- The number of timers waiting to run (one-shot and periodic).
function _M.pending_count()
  local n = 0
  for _ in pairs(pending) do n = n + 1 end
  return n
end

return _M
