--- moongate.client.tls: the client certificate of the request's TLS connection (mTLS), as
-- Kong's kong.client.tls names it where Kong has the call. The certificate is parsed once
-- per connection, in C, the first time a request asks; these calls only copy strings out.
-- A resumed TLS session keeps its verification results but not the intermediate chain:
-- get_full_client_certificate_chain() then returns the leaf alone.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"

local C, OK, DECLINED = base.C, base.OK, base.DECLINED
local str_out, len_out = base.str_out, base.len_out
local ffi_string = ffi.string
local check, REQUEST = phases.check, phases.REQUEST
local type, error, gmatch, concat = type, error, string.gmatch, table.concat

local _M = {}

-- ca_ids table -> its verifier key, per allow_partial_chain: plugin configs are long-lived
-- tables, so the key is built once, not per request
local keys = { [true] = setmetatable({}, { __mode = "k" }),
               [false] = setmetatable({}, { __mode = "k" }) }

local function field(what)
  if C.mg_ffi_client_tls_get(what, str_out, len_out) ~= OK then return nil end
  return ffi_string(str_out[0], len_out[0])
end

--- The certificate chain the client sent (PEM, leaf first), or nil without one.
-- @phases rewrite … log
function _M.get_full_client_certificate_chain()
  check(REQUEST, "moongate.client.tls.get_full_client_certificate_chain")
  return field(0)
end

--- The listener's verification of the client certificate (ssl_verify_client), as nginx's
-- $ssl_client_verify: "SUCCESS", "FAILED:<reason>" or "NONE" (no certificate, or the
-- listener does not verify). @phases rewrite … log
function _M.get_client_verify()
  check(REQUEST, "moongate.client.tls.get_client_verify")
  return field(7)
end

--- The client certificate's names, or nil without one: { subject_dn = "CN=a,O=b" (RFC
-- 2253), issuer_dn, cn ("" without one), serial (hex), fingerprint (SHA-256 hex),
-- sans = { dns = {..}, uri = {..}, email = {..}, ip = {..} }, san_list = {"DNS:a", ..} in
-- the certificate's order }. A new table per call. @phases rewrite … log
function _M.get_client_certificate()
  check(REQUEST, "moongate.client.tls.get_client_certificate")
  local dn = field(1)
  if not dn then return nil end
  local sans = { dns = {}, uri = {}, email = {}, ip = {} }
  local list = {}
  for kind, value in gmatch(field(4), "([%a]+):([^\n]*)") do
    local t = sans[kind:lower()]
    if t then
      t[#t + 1] = value
      list[#list + 1] = kind .. ":" .. value
    end
  end
  return { subject_dn = dn, issuer_dn = field(2), cn = field(3), serial = field(5),
           fingerprint = field(6), sans = sans, san_list = list }
end

--- Whether the client certificate verifies against these ca_certificates ids (chain,
-- validity, clientAuth usage), as configured on an mtls-auth plugin (the lists of every
-- mtls-auth plugin are checked once per handshake): true; false, reason; or nil, "no
-- certificate". @phases rewrite … log
function _M.verify_client(ca_ids, allow_partial_chain)
  check(REQUEST, "moongate.client.tls.verify_client")
  if type(ca_ids) ~= "table" then error("ca_ids must be an array of ids", 2) end
  local partial = allow_partial_chain and true or false
  local key = keys[partial][ca_ids]
  if not key then
    key = concat(ca_ids, "\n") .. (partial and "|partial" or "")
    keys[partial][ca_ids] = key
  end
  local rc = C.mg_ffi_client_tls_verdict(key, #key, str_out, len_out)
  if rc == OK then return true end
  if rc == DECLINED then return nil, "no certificate" end
  local why = len_out[0] > 0 and ffi_string(str_out[0], len_out[0]) or "failed verification"
  return false, why
end

return _M
