--- moongate.client: who is calling — the peer address, the forwarded address (from trusted
-- proxies), and the consumer an authentication plugin identified.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"

local C, OK = base.C, base.OK
local ffi_string = ffi.string
local check, REQUEST = phases.check, phases.REQUEST
local type, error, tostring = type, error, tostring
local bor = require("bit").bor

local _M = { tls = require "moongate.pdk.client_tls" }
local ipbuf = ffi.new("char[64]")
local len_out = base.len_out

-- set by the runtime: returns the current request's Lua state (consumer, credential)
_M.current = nil

--- The address of the peer that connected. @phases rewrite … log
function _M.get_ip()
  check(REQUEST, "moongate.client.get_ip")
  if C.mg_ffi_client_get_ip(ipbuf, 64, len_out) ~= OK then return nil end
  return ffi_string(ipbuf, len_out[0])
end

--- The client's address as forwarded by a trusted proxy (real_ip_header), else the peer's.
-- @phases rewrite … log
function _M.get_forwarded_ip()
  check(REQUEST, "moongate.client.get_forwarded_ip")
  if C.mg_ffi_client_get_forwarded_ip(ipbuf, 64, len_out) ~= OK then return nil end
  return ffi_string(ipbuf, len_out[0])
end

--- The peer's port. @phases rewrite … log
function _M.get_port()
  check(REQUEST, "moongate.client.get_port")
  return C.mg_ffi_client_get_port()
end

--- Records the consumer (and credential) this request was authenticated as.
-- @phases rewrite, access
function _M.authenticate(consumer, credential)
  check(phases.BEFORE_PROXY, "moongate.client.authenticate")
  if consumer ~= nil and type(consumer) ~= "table" then
    error("consumer must be a table or nil", 2)
  end
  if credential ~= nil and type(credential) ~= "table" then
    error("credential must be a table or nil", 2)
  end
  local req = _M.current()
  req.consumer, req.credential = consumer, credential
  -- the balancer's hash_on: consumer input (Kong: the consumer's id, else the credential's)
  local id = consumer and consumer.id or credential and credential.id
  id = id ~= nil and tostring(id) or ""
  C.mg_ffi_client_set_consumer_id(id, #id)
end

--- A configured consumer by id (or custom_id), or by username when by_username is true;
-- nil, "consumer not found" otherwise. @phases rewrite, access, timer
function _M.load_consumer(key, by_username)
  check(bor(phases.BEFORE_PROXY, phases.TIMER), "moongate.client.load_consumer")
  if type(key) ~= "string" then error("key must be a string", 2) end
  local c = require("moongate.runtime").load_consumer(key, by_username)
  if not c then return nil, "consumer not found" end
  return c
end

--- The authenticated consumer, or nil. @phases rewrite … log
function _M.get_consumer()
  check(REQUEST, "moongate.client.get_consumer")
  return _M.current().consumer
end

--- The credential the consumer authenticated with, or nil. @phases rewrite … log
function _M.get_credential()
  check(REQUEST, "moongate.client.get_credential")
  return _M.current().credential
end

return _M
