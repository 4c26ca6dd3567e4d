--- moongate.pdk: builds the `moongate` table plugins program against (also reachable as
-- `kong`, so Kong plugins port with few changes): request, response, service, client, ctx,
-- log, node, sleep. The runtime installs it as a global once, in the master, before any
-- plugin module is loaded.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"

local C, AGAIN, OK = base.C, base.AGAIN, base.OK
local check = phases.check
local type, error, yield, tostring, lower = type, error, coroutine.yield, tostring, string.lower

local moongate = {
  request = require "moongate.pdk.request",
  response = require "moongate.pdk.response",
  service = require "moongate.pdk.service",
  client = require "moongate.pdk.client",
  log = require "moongate.pdk.log",
  shared = require "moongate.pdk.shared",
  timer = require "moongate.pdk.timer",
  http = require "moongate.http",
  redis = require "moongate.redis",
  node = {},
  version = "0.1.0",
}
moongate.socket = require "moongate.pdk.socket"
moongate.tls = require "moongate.pdk.tls"
moongate.upstream = require "moongate.pdk.upstream"

local function current()
  -- replaced by the runtime with the running request's state
  error("no request is running", 3)
end

local _M = { moongate = moongate, current = current }

--- ctx.shared (one table per request, shared by its plugins) and ctx.plugin (one per
-- plugin and request), resolved for the running request.
moongate.ctx = setmetatable({}, {
  __index = function(_, k)
    if k == "shared" then
      check(phases.REQUEST, "moongate.ctx.shared")
      local state = _M.current()
      local t = state.shared
      if not t then
        t = {}
        state.shared = t
      end
      return t
    elseif k == "plugin" then
      check(phases.REQUEST, "moongate.ctx.plugin")
      local state = _M.current()
      local name = moongate.log.plugin_name or ""
      local all = state.plugin_ctx
      if not all then
        all = {}
        state.plugin_ctx = all
      end
      local t = all[name]
      if not t then
        t = {}
        all[name] = t
      end
      return t
    end
  end,
  __newindex = function()
    error("moongate.ctx fields cannot be replaced; use moongate.ctx.shared", 2)
  end,
})
moongate.client.current = function() return _M.current() end

--- A stable id for this node (generated when the gateway starts). @phases any
function moongate.node.get_id()
  return _M.node_id
end
moongate.upstream._node_id = moongate.node.get_id

--- The worker's number (0-based) and process id. @phases any
function moongate.node.get_worker_id()
  return C.mg_ffi_worker_id()
end

function moongate.node.get_worker_pid()
  return C.mg_ffi_worker_pid()
end

--- Pauses the running request (or timer, or certificate handler) for `seconds` without
-- blocking the worker.
-- @phases rewrite, access, timer, certificate
function moongate.sleep(seconds)
  check(phases.YIELDABLE, "moongate.sleep")
  if type(seconds) ~= "number" or seconds < 0 then
    error("seconds must be a non-negative number", 2)
  end
  local rc = C.mg_ffi_sleep(seconds)
  if rc == AGAIN then
    local saved = _M.save()
    yield()
    _M.restore(saved)
  elseif rc == base.BUSY then
    error("moongate.sleep: this request already waits (a sleep in another coroutine?)", 2)
  elseif rc ~= OK then
    error("moongate.sleep cannot run here", 2)
  end
end

--- The time (seconds since the epoch, millisecond precision, cached per event loop turn).
function moongate.now()
  return C.mg_ffi_now()
end

local REDACT = { authorization = true, ["proxy-authorization"] = true, cookie = true,
                 ["set-cookie"] = true, apikey = true }

--- A summary of the request for logging plugins: method, path, status, sizes, route,
-- service, consumer and client addresses. Credentials and cookies are redacted, and the
-- query string is left out (it often carries keys). @phases log
function moongate.log.serialize()
  check(phases.LOG, "moongate.log.serialize")
  local req = moongate.request
  local headers = req.get_headers()
  local state = _M.current()
  local secret = state.secret_headers   -- nil, one lower-case name, or a set of them
  local many = type(secret) == "table"
  for k in pairs(headers) do
    if REDACT[k] or k == secret or (many and secret[k]) then headers[k] = "REDACTED" end
  end
  local consumer = state.consumer
  return {
    request = { method = req.get_method(), path = req.get_path(), headers = headers,
                id = req.get_id() },
    response = { status = C.mg_ffi_resp_get_status() },
    route = { name = _M.route_name() },
    service = { name = _M.service_name() },
    consumer = consumer and { id = consumer.id, username = consumer.username,
                              custom_id = consumer.custom_id } or nil,
    client_ip = moongate.client.get_forwarded_ip(),
    started_at = state.started_at,
  }
end

--- Marks a request header as a secret for this request: serialize() shows it as "REDACTED".
-- Authentication plugins call it for the headers their credentials came in.
-- @phases rewrite, access
function moongate.log.redact_header(name)
  check(phases.BEFORE_PROXY, "moongate.log.redact_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  local state = _M.current()
  local secret, lname = state.secret_headers, lower(name)
  if secret == nil or secret == lname then
    state.secret_headers = lname          -- the usual case: one header, no table
  elseif type(secret) == "string" then
    state.secret_headers = { [secret] = true, [lname] = true }
  else
    secret[lname] = true
  end
end

local str_out, len_out = base.str_out, base.len_out
function _M.route_name()
  if C.mg_ffi_req_get_route_name(str_out, len_out) ~= OK then return nil end
  return ffi.string(str_out[0], len_out[0])
end
function _M.service_name()
  if C.mg_ffi_req_get_service_name(str_out, len_out) ~= OK then return nil end
  return ffi.string(str_out[0], len_out[0])
end

return _M
