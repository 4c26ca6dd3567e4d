--- moongate.request: the client's request as the gateway received it (read-only).
-- Hot getters are FFI calls that reuse the out-parameters of core.base.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"
local codec = require "moongate.codec"

local C, OK = base.C, base.OK
local str_out, len_out, str_out2, len_out2 = base.str_out, base.len_out, base.str_out2,
  base.len_out2
local ffi_string = ffi.string
local check, REQUEST = phases.check, phases.REQUEST
local lower, gsub, gmatch, find, sub, char = string.lower, string.gsub, string.gmatch,
  string.find, string.sub, string.char
local tonumber, type, error = tonumber, type, error

local _M = {}

local function getter(fn, name)
  return function()
    check(REQUEST, name)
    if fn(str_out, len_out) ~= OK then return nil end
    return ffi_string(str_out[0], len_out[0])
  end
end

--- The method, e.g. "GET". @phases rewrite, access, header_filter, body_filter, log
_M.get_method = getter(C.mg_ffi_req_get_method, "moongate.request.get_method")
--- The path as received, without the query string. @phases rewrite … log
_M.get_path = getter(C.mg_ffi_req_get_path, "moongate.request.get_path")
--- The query string as received, without "?" ("" when none). @phases rewrite … log
_M.get_raw_query = getter(C.mg_ffi_req_get_raw_query, "moongate.request.get_raw_query")
--- The host the client asked for (Host header or absolute-form target). @phases rewrite … log
_M.get_host = getter(C.mg_ffi_req_get_host, "moongate.request.get_host")
--- "http" or "https". @phases rewrite … log
_M.get_scheme = getter(C.mg_ffi_req_get_scheme, "moongate.request.get_scheme")

--- The port the client connected to. @phases rewrite … log
function _M.get_port()
  check(REQUEST, "moongate.request.get_port")
  return C.mg_ffi_req_get_port()
end

--- 1.0 or 1.1. @phases rewrite … log
function _M.get_http_version()
  check(REQUEST, "moongate.request.get_http_version")
  return C.mg_ffi_req_get_http_version()
end

--- The first value of a request header, or nil. Names are case-insensitive.
-- @phases rewrite, access, header_filter, body_filter, log
function _M.get_header(name)
  check(REQUEST, "moongate.request.get_header")
  if type(name) ~= "string" then
    error("header name must be a string", 2)
  end
  if C.mg_ffi_req_get_header(name, #name, str_out, len_out) ~= OK then
    return nil
  end
  return ffi_string(str_out[0], len_out[0])
end

--- How many times header `name` was sent (0 when absent). Authentication plugins refuse a
-- credential header sent twice: the gateway and the upstream might read different copies.
-- @phases rewrite … log
function _M.get_header_count(name)
  check(REQUEST, "moongate.request.get_header_count")
  if type(name) ~= "string" then
    error("header name must be a string", 2)
  end
  return C.mg_ffi_req_header_count_of(name, #name)
end

--- All request headers: lower-cased names; a header sent several times maps to a list.
-- @param max at most this many header lines (default 100)
-- @phases rewrite, access, header_filter, body_filter, log
function _M.get_headers(max)
  check(REQUEST, "moongate.request.get_headers")
  local n = C.mg_ffi_req_header_count()
  if max and max < n then n = max end
  local t = {}
  for i = 0, n - 1 do
    C.mg_ffi_req_header_at(i, str_out, len_out, str_out2, len_out2)
    local k = lower(ffi_string(str_out[0], len_out[0]))
    local v = ffi_string(str_out2[0], len_out2[0])
    local prev = t[k]
    if prev == nil then
      t[k] = v
    elseif type(prev) == "table" then
      prev[#prev + 1] = v
    else
      t[k] = { prev, v }
    end
  end
  return t
end


--- The query string decoded into a table (repeated keys map to lists; a key without "="
-- maps to true). @phases rewrite … log
function _M.get_query(max)
  check(REQUEST, "moongate.request.get_query")
  return codec.decode_args(_M.get_raw_query() or "", max)
end

--- One query argument (the first when repeated), or nil. @phases rewrite … log
function _M.get_query_arg(name)
  local v = _M.get_query()[name]
  if type(v) == "table" then return v[1] end
  return v
end

local AGAIN, DECLINED = base.AGAIN, base.DECLINED
local yield = coroutine.yield

--- The whole request body as a string ("" when there is none). The first call reads it
-- (the coroutine waits for it without blocking the worker); later calls return it at once.
-- Returns nil, err when it is larger than limits.client_body_buffer_size.
-- @phases rewrite, access
function _M.get_raw_body()
  check(phases.BEFORE_PROXY, "moongate.request.get_raw_body")
  while true do
    local rc = C.mg_ffi_req_read_body(str_out, len_out)
    if rc == OK then return ffi_string(str_out[0], len_out[0]) end
    if rc == DECLINED then return nil, "request body larger than client_body_buffer_size" end
    if rc == 413 then return nil, "request body too large" end   -- over the body limit
    if rc ~= AGAIN then return nil, "invalid request body" end
    local pdk = require "moongate.pdk"
    local saved = pdk.save()
    yield()
    pdk.restore(saved)
  end
end

local cjson = require "cjson.safe"

--- The body decoded by its Content-Type: JSON (application/json) or a form
-- (application/x-www-form-urlencoded). Returns table, nil, mimetype or nil, err, mimetype.
-- @phases rewrite, access
function _M.get_body()
  check(phases.BEFORE_PROXY, "moongate.request.get_body")
  local ctype = (_M.get_header("Content-Type") or ""):lower()
  local mime = ctype:match("^%s*([^;%s]+)") or ""
  local raw, err = _M.get_raw_body()
  if not raw then return nil, err, mime end
  if mime == "application/json" or mime:match("%+json$") then
    local t, jerr = cjson.decode(raw)
    if jerr or type(t) ~= "table" then return nil, "invalid JSON body", mime end
    return t, nil, mime
  elseif mime == "application/x-www-form-urlencoded" then
    return codec.decode_args(raw), nil, mime
  end
  return nil, "unsupported content type \"" .. mime .. "\"", mime
end

--- Lowers this request's body limit (never raises it above limits.client_max_body_size): a
-- body found larger is answered 413 {"message": message} — before a byte of it is read when
-- Content-Length says so, mid-stream for a chunked body. Returns true, or false when the body
-- is already known to be larger (then the caller answers, typically with exit(413)).
-- @phases rewrite, access
function _M.limit_body(bytes, message)
  check(phases.BEFORE_PROXY, "moongate.request.limit_body")
  if type(bytes) ~= "number" or bytes < 1 or bytes % 1 ~= 0 then
    error("bytes must be a positive integer", 2)
  end
  if message ~= nil and type(message) ~= "string" then error("message must be a string", 2) end
  message = message or "Request Entity Too Large"
  local rc = C.mg_ffi_req_limit_body(bytes, message, #message)
  if rc == OK then return true end
  if rc == DECLINED then return false end
  error("no request", 2)
end

--- The request id (X-Request-ID unless configured otherwise). @phases rewrite … log
_M.get_id = getter(C.mg_ffi_req_get_id, "moongate.request.get_id")

return _M
