--- moongate.response: the answer the client gets. `exit` ends the request from rewrite or
-- access (the upstream is never called); header changes made before the response head is
-- sent apply to it, whether it comes from the upstream or from exit.
local ffi = require "ffi"
local cjson = require "cjson.safe"
local base = require "moongate.core.base"
local phases = require "moongate.phases"

local C, OK = base.C, base.OK
local str_out, len_out = base.str_out, base.len_out
local ffi_string = ffi.string
local check = phases.check
local bor = require("bit").bor
local type, tostring, pairs, error, concat, yield = type, tostring, pairs, error, table.concat,
  coroutine.yield

local find, floor = string.find, math.floor

local _M = {}

-- yielded by exit(): the C runtime ends the phase and sends what mg_ffi_resp_exit staged
_M.EXIT = "moongate:exit"

local BEFORE_HEAD = bor(phases.REWRITE, phases.ACCESS, phases.HEADER_FILTER)

local MAX_EXACT = 2 ^ 53   -- integers up to this are exact in a double

local function header_op(op, fn, name, value)
  if type(name) ~= "string" or name == "" then
    error("header name must be a non-empty string", 3)
  end
  local rc
  if op == 2 then
    rc = fn(op, name, #name, "", 0)
  elseif type(value) == "number" and value == floor(value) and value <= MAX_EXACT
         and value >= -MAX_EXACT then
    -- an integer is formatted by the runtime: no Lua string (garbage) per call
    rc = C.mg_ffi_resp_header_int(op, name, #name, value)
  else
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" then
      error("header value must be a string or a number", 3)
    end
    if find(value, "\r", 1, true) or find(value, "\n", 1, true) then
      error("header value must not contain CR or LF", 3)
    end
    rc = fn(op, name, #name, value, #value)
  end
  if rc ~= OK then
    error("cannot change header \"" .. name .. "\" now: the response head was sent", 3)
  end
end

--- Sets a response header, replacing every value it had. @phases rewrite, access, header_filter
function _M.set_header(name, value)
  check(BEFORE_HEAD, "moongate.response.set_header")
  header_op(0, C.mg_ffi_resp_header, name, value)
end

--- Adds a value to a response header. @phases rewrite, access, header_filter
function _M.add_header(name, value)
  check(BEFORE_HEAD, "moongate.response.add_header")
  header_op(1, C.mg_ffi_resp_header, name, value)
end

--- Removes a response header. @phases rewrite, access, header_filter
function _M.clear_header(name)
  check(BEFORE_HEAD, "moongate.response.clear_header")
  header_op(2, C.mg_ffi_resp_header, name)
end

--- The status sent to the client (the upstream's, or exit's).
-- @phases header_filter, body_filter, log
function _M.get_status()
  check(phases.AFTER_HEAD, "moongate.response.get_status")
  return C.mg_ffi_resp_get_status()
end

--- A header of the response (as the upstream sent it). @phases header_filter, body_filter, log
function _M.get_header(name)
  check(phases.AFTER_HEAD, "moongate.response.get_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  if C.mg_ffi_upstream_resp_get_header(name, #name, str_out, len_out) ~= OK then return nil end
  return ffi_string(str_out[0], len_out[0])
end

local eof_out = ffi.new("int[1]")

--- The piece of the response body this body_filter call sees, and whether it is the last.
-- @phases body_filter
function _M.get_chunk()
  check(phases.BODY_FILTER, "moongate.response.get_chunk")
  if C.mg_ffi_body_get_chunk(str_out, len_out, eof_out) ~= OK then return nil, true end
  return ffi_string(str_out[0], len_out[0]), eof_out[0] ~= 0
end

--- Replaces the piece of the response body this body_filter call sees ("" drops it).
-- @phases body_filter
function _M.set_chunk(chunk)
  check(phases.BODY_FILTER, "moongate.response.set_chunk")
  if type(chunk) ~= "string" then error("chunk must be a string", 2) end
  if C.mg_ffi_body_set_chunk(chunk, #chunk) ~= OK then error("no body is being filtered", 2) end
end

--- Kong's get_raw_body: buffers the body (nothing reaches the client meanwhile) and returns
-- all of it on the last call; nil before that. @phases body_filter
function _M.get_raw_body()
  check(phases.BODY_FILTER, "moongate.response.get_raw_body")
  local chunk, eof = _M.get_chunk()
  local state = require("moongate.pdk").moongate.ctx.plugin   -- one buffer per plugin
  local parts = state.raw_body_parts
  if not parts then
    parts = {}
    state.raw_body_parts = parts
  end
  parts[#parts + 1] = chunk
  if not eof then
    _M.set_chunk("")
    return nil
  end
  local body = concat(parts)
  state.raw_body_parts = nil
  _M.set_chunk(body)
  return body
end

--- Kong's set_raw_body: replaces the whole body (call it on the last body_filter call, after
-- get_raw_body). @phases body_filter
function _M.set_raw_body(body)
  check(phases.BODY_FILTER, "moongate.response.set_raw_body")
  _M.set_chunk(body)
end

--- Ends the request with this answer; never returns. A table body is sent as JSON.
-- @param status HTTP status (100–599)
-- @param body string, table (JSON) or nil
-- @param headers table of name → value (or list of values)
-- @phases rewrite, access
function _M.exit(status, body, headers)
  check(phases.BEFORE_PROXY, "moongate.response.exit")
  -- a 1xx is interim: a client would keep reading for the final answer that never comes
  if type(status) ~= "number" or status < 200 or status > 599 or status % 1 ~= 0 then
    error("status must be an integer between 200 and 599", 2)
  end
  local ctype = false
  if headers ~= nil then
    if type(headers) ~= "table" then error("headers must be a table", 2) end
    for k, v in pairs(headers) do
      if type(k) ~= "string" or k == "" or k:find("[%s:]") then
        error("invalid header name: " .. tostring(k), 2)
      end
      if k:lower() == "content-type" then ctype = true end
    end
  end
  if type(body) == "table" then
    local json, err = cjson.encode(body)
    if not json then error("cannot encode the body as JSON: " .. err, 2) end
    body = json
    if not ctype then header_op(0, C.mg_ffi_resp_header, "Content-Type",
                                "application/json; charset=utf-8") end
  elseif body ~= nil and type(body) ~= "string" then
    error("body must be a string, a table or nil", 2)
  end
  -- exit's headers are set after any set_header/add_header made earlier, so they win
  if headers then
    for k, v in pairs(headers) do
      if type(v) == "table" then
        for i, one in ipairs(v) do
          header_op(i == 1 and 0 or 1, C.mg_ffi_resp_header, k, tostring(one))
        end
      else
        header_op(0, C.mg_ffi_resp_header, k, tostring(v))
      end
    end
  end
  body = body or ""
  if C.mg_ffi_resp_exit(status, body, #body, "", 0) ~= OK then
    error("cannot exit now: the response was already started", 2)
  end
  -- this coroutine is never resumed: leave no trace of the request behind
  require("moongate.pdk").restore({ nil, nil, 0 })
  yield(_M.EXIT)
end

return _M
