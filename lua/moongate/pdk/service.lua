--- moongate.service: the request the gateway sends to the service (changes apply when the
-- upstream request is written, so they are allowed until the proxy starts) and the
-- service's response as it arrived.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"
local codec = require "moongate.codec"

local C, OK = base.C, base.OK
local str_out, len_out = base.str_out, base.len_out
local ffi_string = ffi.string
local check, BEFORE_PROXY, AFTER_HEAD = phases.check, phases.BEFORE_PROXY, phases.AFTER_HEAD
local type, tostring, error, pairs, concat, sort = type, tostring, error, pairs, table.concat,
  table.sort
local gsub, byte, format = string.gsub, string.byte, string.format

local find = string.find

local request, response = {}, {}

local known_names, nknown = {}, 0   -- header names already checked (bounded)

local function header_op(op, name, value, fn_name)
  check(BEFORE_PROXY, fn_name)
  if not known_names[name] then   -- a name is checked once: a pattern would stop the JIT
    if type(name) ~= "string" or name == "" or name:find("[%s:]") then
      error("header name must be a non-empty token", 3)
    end
    if nknown >= 1024 then known_names, nknown = {}, 0 end
    known_names[name], nknown = true, nknown + 1
  end
  if op ~= 2 then
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" then error("header value must be a string or a number", 3) end
    if find(value, "\r", 1, true) or find(value, "\n", 1, true) or find(value, "\0", 1, true) then
      error("header value must not contain CR, LF or NUL", 3)
    end
  else
    value = ""
  end
  if C.mg_ffi_upstream_header(op, name, #name, value, #value) ~= OK then
    error("cannot change the upstream request now", 3)
  end
end

--- Sets a header of the upstream request, replacing the client's. @phases rewrite, access
function request.set_header(name, value)
  header_op(0, name, value, "moongate.service.request.set_header")
end

--- Adds a header value to the upstream request. @phases rewrite, access
function request.add_header(name, value)
  header_op(1, name, value, "moongate.service.request.add_header")
end

--- Removes a header from the upstream request. @phases rewrite, access
function request.clear_header(name)
  header_op(2, name, nil, "moongate.service.request.clear_header")
end

--- Replaces the upstream path (the service path and strip_path no longer apply).
-- @phases rewrite, access
function request.set_path(path)
  check(BEFORE_PROXY, "moongate.service.request.set_path")
  if type(path) ~= "string" or byte(path, 1) ~= 47 or path:find("[%s%z?#]") then
    error("path must be a string starting with \"/\" without spaces, \"?\" or \"#\"", 2)
  end
  C.mg_ffi_upstream_set_path(path, #path)
end

--- Replaces the upstream query string (without "?"). @phases rewrite, access
function request.set_raw_query(query)
  check(BEFORE_PROXY, "moongate.service.request.set_raw_query")
  if type(query) ~= "string" or query:find("[%s%z#]") then
    error("query must be a string without spaces or \"#\"", 2)
  end
  C.mg_ffi_upstream_set_query(query, #query)
end


--- Replaces the upstream query string with the encoded table (keys sorted; a list value
-- repeats its key; `true` gives a bare key). @phases rewrite, access
function request.set_query(args)
  check(BEFORE_PROXY, "moongate.service.request.set_query")
  if type(args) ~= "table" then error("args must be a table", 2) end
  local q = codec.encode_args(args)
  C.mg_ffi_upstream_set_query(q, #q)
end

--- Replaces the upstream method. @phases rewrite, access
function request.set_method(method)
  check(BEFORE_PROXY, "moongate.service.request.set_method")
  if type(method) ~= "string" or not method:find("^[%u]+$") then
    error("method must be an upper-case token such as \"GET\"", 2)
  end
  C.mg_ffi_upstream_set_method(method, #method)
end

--- Replaces the body sent to the service (Content-Length follows). The client's body is
-- read first, so the connection stays in step. @phases rewrite, access
function request.set_raw_body(body)
  check(BEFORE_PROXY, "moongate.service.request.set_raw_body")
  if type(body) ~= "string" then error("body must be a string", 2) end
  local ok, err = require("moongate.pdk.request").get_raw_body()
  if not ok then return nil, err end
  if C.mg_ffi_upstream_set_body(body, #body) ~= OK then
    error("cannot replace the body now: the upstream request is already written", 2)
  end
  return true
end

--- Replaces the body with `args` encoded as JSON (default) or as a form, and sets
-- Content-Type. @phases rewrite, access
function request.set_body(args, mimetype)
  check(BEFORE_PROXY, "moongate.service.request.set_body")
  if type(args) ~= "table" then error("args must be a table", 2) end
  mimetype = mimetype or "application/json"
  local body
  if mimetype == "application/json" then
    body = require("cjson.safe").encode(args)
    if not body then error("args cannot be encoded as JSON", 2) end
  elseif mimetype == "application/x-www-form-urlencoded" then
    body = codec.encode_args(args)
  else
    error("mimetype must be application/json or application/x-www-form-urlencoded", 2)
  end
  local ok, err = request.set_raw_body(body)
  if not ok then return nil, err end
  header_op(0, "Content-Type", mimetype, "moongate.service.request.set_body")
  return true
end

--- A header of the service's response as it arrived. @phases header_filter, body_filter, log
function response.get_header(name)
  check(AFTER_HEAD, "moongate.service.response.get_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  if C.mg_ffi_upstream_resp_get_header(name, #name, str_out, len_out) ~= OK then return nil end
  return ffi_string(str_out[0], len_out[0])
end

--- The service's status. @phases header_filter, body_filter, log
function response.get_status()
  check(AFTER_HEAD, "moongate.service.response.get_status")
  return C.mg_ffi_resp_get_status()
end

return { request = request, response = response }
