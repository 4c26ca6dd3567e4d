--- moongate.spec.pdk: an in-process kit to unit-test a plugin handler's phases without a
-- running gateway. A kit is one request (what the client sent, who sent it, the route and
-- service it matched); `kit:run(handler, phase, conf)` runs one phase of a handler with the
-- globals `moongate` and `kong` replaced by a PDK over plain tables, then shows what the
-- handler did: the upstream request after its changes, the response (or what `exit`
-- answered, or what body_filter made of the body), the log lines, the sleeps, the request
-- context. Shared dictionaries (moongate.shared.<name>) live in the module, across kits.
--
-- The kit mirrors lua/moongate/pdk/*.lua function by function: the same phase checks (it
-- reuses moongate.phases, so the masks and the "<fn> is not allowed in the <phase> phase"
-- messages are the gateway's), the same argument checks with the same messages, the same
-- header semantics (set replaces, add appends, clear removes, in the order made), and an
-- `exit` that ends the phase the same way: the phase runs in a coroutine and exit yields the
-- runtime's "moongate:exit" marker, so a plugin's own pcall cannot catch it. It needs neither
-- the binary nor the FFI runtime (it never loads moongate.pdk.* or moongate.core.base), only
-- moongate.phases, moongate.schema and lua-cjson. spec/01-unit/04-pdk_kit_spec.lua checks
-- every function against the real PDK, so a change to one without the other fails a spec.
--
--   local pdk = require "moongate.spec.pdk"
--   local kit = pdk.new({ method = "GET", path = "/orders", headers = { ["X-In"] = "1" } })
--   kit:run(handler, "access", { header_name = "X-Stamp" }, schema)   -- schema: optional
--   kit:set_upstream_response({ status = 201, headers = { ["X-Up"] = "yes" } })
--   kit:run(handler, "header_filter")      -- the config given last time is reused
--   assert.equal("1", kit.upstream_request.headers["x-in"])
--
-- What the kit leaves out: the gateway's own forwarding headers (Host, X-Forwarded-*,
-- X-Real-IP, the request id) and the service path / strip_path in the upstream request, and
-- the headers the gateway adds to responses (Server, Date, Content-Length, Via).
local bit = require "bit"
local phases = require "moongate.phases"
local codec = require "moongate.codec"
local schema = require "moongate.schema"
local cjson = require "cjson.safe"

local check = phases.check
local REQUEST, BEFORE_PROXY, AFTER_HEAD, YIELDABLE = phases.REQUEST, phases.BEFORE_PROXY,
  phases.AFTER_HEAD, phases.YIELDABLE
local bor = require("bit").bor
local type, error, tostring, tonumber, pairs, ipairs, select, setmetatable, getmetatable,
  rawget, pcall = type, error, tostring, tonumber, pairs, ipairs, select, setmetatable,
  getmetatable, rawget, pcall
local lower, gsub, gmatch, find, sub, char, byte, format, match =
  string.lower, string.gsub, string.gmatch, string.find, string.sub, string.char,
  string.byte, string.format, string.match
local concat, sort = table.concat, table.sort
local co_create, co_resume, co_status, yield = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.yield
local unpack = unpack or table.unpack

local _M = {}

--- What `moongate.response.exit` yields (the runtime's marker, runtime.lua's EXIT).
_M.EXIT = "moongate:exit"

--- The PDK version the kit mirrors (moongate.version).
_M.VERSION = "0.1.0"

local LEVELS = { debug = 0, info = 1, notice = 2, warn = 3, err = 4, crit = 5 }
local LEVEL_NAMES = {}
for name, n in pairs(LEVELS) do LEVEL_NAMES[n] = name end

local BEFORE_HEAD = bor(phases.REWRITE, phases.ACCESS, phases.HEADER_FILTER)

local active        -- the kit whose phase is running (nil between runs)

local function current()
  if not active then error("no request is running", 3) end
  return active
end

-- ---- header tables ----------------------------------------------------------------------
-- Headers are kept as name → value, names lower-cased, a repeated header as a list of its
-- values in order (what moongate.request.get_headers returns).

local add_value = codec.add_value

local function copy_headers(map)
  local t = {}
  for k, v in pairs(map) do
    if type(v) == "table" then
      local l = {}
      for i, x in ipairs(v) do l[i] = x end
      v = l
    end
    t[k] = v
  end
  return t
end

-- op: 0 set (replaces every value), 1 add (appends), 2 clear (removes)
local function apply_op(map, op, name, value)
  local k = lower(name)
  if op == 0 then
    map[k] = value
  elseif op == 1 then
    add_value(map, k, value)
  else
    map[k] = nil
  end
end

-- Accepts { Name = "v" or { "v1", "v2" } or number } or { { "Name", "v" }, ... } and returns
-- the header lines in order, { { name = , value = } } (a map is ordered by name).
local function header_lines(headers, what)
  local lines = {}
  if headers == nil then return lines end
  if type(headers) ~= "table" then error(what .. " must be a table", 3) end
  if #headers > 0 then
    for i, pair in ipairs(headers) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" or pair[2] == nil then
        error(format("%s[%d] must be { name, value }", what, i), 3)
      end
      lines[#lines + 1] = { name = pair[1], value = tostring(pair[2]) }
    end
    return lines
  end
  local names = {}
  for k in pairs(headers) do
    if type(k) ~= "string" then error(what .. ": header names must be strings", 3) end
    names[#names + 1] = k
  end
  sort(names, function(a, b) return lower(a) < lower(b) end)
  for _, k in ipairs(names) do
    local v = headers[k]
    local vs = type(v) == "table" and v or { v }
    for _, one in ipairs(vs) do
      lines[#lines + 1] = { name = k, value = tostring(one) }
    end
  end
  return lines
end

local function lines_to_map(lines)
  local map = {}
  for _, l in ipairs(lines) do add_value(map, lower(l.name), l.value) end
  return map
end

-- The response the client gets: the upstream's (or exit's) headers with the plugins'
-- set/add/clear applied in order. Like Kong, exit's own headers win over earlier set_header.
local function refresh_response(kit)
  local res = kit.response
  local headers
  if kit.exited then
    headers = {}
    for _, op in ipairs(kit.resp_ops) do apply_op(headers, op[1], op[2], op[3]) end
    local from_exit = {}
    for _, l in ipairs(kit.exit_lines) do add_value(from_exit, lower(l.name), l.value) end
    for k, v in pairs(from_exit) do headers[k] = v end
    res.status, res.body = kit.exit_status, kit.exit_body
  else
    local up = kit.upstream_response
    headers = up and copy_headers(up.headers) or {}
    for _, op in ipairs(kit.resp_ops) do apply_op(headers, op[1], op[2], op[3]) end
    res.status, res.body = up and up.status, up and concat(kit.body_chunks)
  end
  res.headers = headers
end

-- ---- the PDK ----------------------------------------------------------------------------
-- One table for every kit: each function works on the kit whose phase is running.

local moongate = { request = {}, response = {}, service = { request = {}, response = {} },
                   client = {}, log = {}, node = {}, version = _M.VERSION }
_M.moongate = moongate

-- request ----------------------------------------------------------------------------------

local request = moongate.request

local function getter(field, name)
  return function()
    check(REQUEST, name)
    return current().request[field]
  end
end

request.get_method = getter("method", "moongate.request.get_method")
request.get_path = getter("path", "moongate.request.get_path")
request.get_raw_query = getter("query", "moongate.request.get_raw_query")
request.get_scheme = getter("scheme", "moongate.request.get_scheme")
request.get_id = getter("id", "moongate.request.get_id")

function request.get_host()
  check(REQUEST, "moongate.request.get_host")
  local h = current().request.host
  -- without the port, as mg_ffi_req_get_host
  if sub(h, 1, 1) == "[" then
    return match(h, "^(%[[^%]]*%])") or h
  end
  return (match(h, "^([^:]*)"))
end

function request.get_port()
  check(REQUEST, "moongate.request.get_port")
  return current().request.port
end

function request.get_http_version()
  check(REQUEST, "moongate.request.get_http_version")
  return current().request.http_version
end

function request.get_header(name)
  check(REQUEST, "moongate.request.get_header")
  if type(name) ~= "string" then
    error("header name must be a string", 2)
  end
  local want = lower(name)
  for _, l in ipairs(current().request.headers) do
    if lower(l.name) == want then return l.value end
  end
  return nil
end

function request.get_header_count(name)
  check(REQUEST, "moongate.request.get_header_count")
  if type(name) ~= "string" then
    error("header name must be a string", 2)
  end
  local want, n = lower(name), 0
  for _, l in ipairs(current().request.headers) do
    if lower(l.name) == want then n = n + 1 end
  end
  return n
end

function request.get_headers(max)
  check(REQUEST, "moongate.request.get_headers")
  local lines = current().request.headers
  local n = #lines
  if max and max < n then n = max end
  local t = {}
  for i = 1, n do add_value(t, lower(lines[i].name), lines[i].value) end
  return t
end


function request.get_query(max)
  check(REQUEST, "moongate.request.get_query")
  return codec.decode_args(request.get_raw_query() or "", max)
end

function request.get_query_arg(name)
  local v = request.get_query()[name]
  if type(v) == "table" then return v[1] end
  return v
end

function request.get_raw_body()
  check(BEFORE_PROXY, "moongate.request.get_raw_body")
  local req = current().request
  if #req.body > req.body_limit then
    return nil, "request body larger than client_body_buffer_size"
  end
  return req.body
end

-- The kit holds the whole body: a body over the limit is "already known to be larger" (false,
-- as when the real gateway saw its Content-Length); kit.body_limit records what was asked.
function request.limit_body(bytes, message)
  check(BEFORE_PROXY, "moongate.request.limit_body")
  if type(bytes) ~= "number" or bytes < 1 or bytes % 1 ~= 0 then
    error("bytes must be a positive integer", 2)
  end
  if message ~= nil and type(message) ~= "string" then error("message must be a string", 2) end
  local kit = current()
  if #kit.request.body > bytes then return false end
  kit.body_limit = { bytes = bytes, message = message or "Request Entity Too Large" }
  return true
end

function request.get_body()
  check(BEFORE_PROXY, "moongate.request.get_body")
  local ctype = lower(request.get_header("Content-Type") or "")
  local mime = match(ctype, "^%s*([^;%s]+)") or ""
  local raw, err = request.get_raw_body()
  if not raw then return nil, err, mime end
  if mime == "application/json" or match(mime, "%+json$") then
    local t, jerr = cjson.decode(raw)
    if jerr or type(t) ~= "table" then return nil, "invalid JSON body", mime end
    return t, nil, mime
  elseif mime == "application/x-www-form-urlencoded" then
    return codec.decode_args(raw), nil, mime
  end
  return nil, "unsupported content type \"" .. mime .. "\"", mime
end

-- service.request / service.response --------------------------------------------------------

local srequest, sresponse = moongate.service.request, moongate.service.response

local function upstream_header_op(op, name, value, fn_name)
  check(BEFORE_PROXY, fn_name)
  if type(name) ~= "string" or name == "" or find(name, "[%s:]") then
    error("header name must be a non-empty token", 3)
  end
  if op ~= 2 then
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" then error("header value must be a string or a number", 3) end
    if find(value, "[\r\n%z]") then error("header value must not contain CR, LF or NUL", 3) end
  else
    value = ""
  end
  apply_op(current().upstream_request.headers, op, name, value)
end

function srequest.set_header(name, value)
  upstream_header_op(0, name, value, "moongate.service.request.set_header")
end

function srequest.add_header(name, value)
  upstream_header_op(1, name, value, "moongate.service.request.add_header")
end

function srequest.clear_header(name)
  upstream_header_op(2, name, nil, "moongate.service.request.clear_header")
end

function srequest.set_path(path)
  check(BEFORE_PROXY, "moongate.service.request.set_path")
  if type(path) ~= "string" or byte(path, 1) ~= 47 or find(path, "[%s%z?#]") then
    error("path must be a string starting with \"/\" without spaces, \"?\" or \"#\"", 2)
  end
  current().upstream_request.path = path
end

function srequest.set_raw_query(query)
  check(BEFORE_PROXY, "moongate.service.request.set_raw_query")
  if type(query) ~= "string" or find(query, "[%s%z#]") then
    error("query must be a string without spaces or \"#\"", 2)
  end
  current().upstream_request.query = query
end


local encode_query = codec.encode_args

function srequest.set_query(args)
  check(BEFORE_PROXY, "moongate.service.request.set_query")
  if type(args) ~= "table" then error("args must be a table", 2) end
  current().upstream_request.query = encode_query(args)
end

function srequest.set_method(method)
  check(BEFORE_PROXY, "moongate.service.request.set_method")
  if type(method) ~= "string" or not find(method, "^[%u]+$") then
    error("method must be an upper-case token such as \"GET\"", 2)
  end
  current().upstream_request.method = method
end

function srequest.set_raw_body(body)
  check(BEFORE_PROXY, "moongate.service.request.set_raw_body")
  if type(body) ~= "string" then error("body must be a string", 2) end
  local ok, err = request.get_raw_body()
  if not ok then return nil, err end
  current().upstream_request.body = body
  return true
end

function srequest.set_body(args, mimetype)
  check(BEFORE_PROXY, "moongate.service.request.set_body")
  if type(args) ~= "table" then error("args must be a table", 2) end
  mimetype = mimetype or "application/json"
  local body
  if mimetype == "application/json" then
    body = cjson.encode(args)
    if not body then error("args cannot be encoded as JSON", 2) end
  elseif mimetype == "application/x-www-form-urlencoded" then
    body = codec.encode_args(args)
  else
    error("mimetype must be application/json or application/x-www-form-urlencoded", 2)
  end
  local ok, err = srequest.set_raw_body(body)
  if not ok then return nil, err end
  upstream_header_op(0, "Content-Type", mimetype, "moongate.service.request.set_body")
  return true
end

-- the upstream response's header as it arrived (nil before it did, and after exit)
local function upstream_header(kit, name)
  local up = not kit.exited and kit.upstream_response
  if not up then return nil end
  local v = up.headers[lower(name)]
  if type(v) == "table" then return v[1] end
  return v
end

function sresponse.get_header(name)
  check(AFTER_HEAD, "moongate.service.response.get_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  return upstream_header(current(), name)
end

function sresponse.get_status()
  check(AFTER_HEAD, "moongate.service.response.get_status")
  return current().response.status
end

-- response ---------------------------------------------------------------------------------

local response = moongate.response
response.EXIT = _M.EXIT

local function response_header_op(op, name, value)
  if type(name) ~= "string" or name == "" then
    error("header name must be a non-empty string", 3)
  end
  if op ~= 2 then
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" then
      error("header value must be a string or a number", 3)
    end
    if find(value, "[\r\n]") then
      error("header value must not contain CR or LF", 3)
    end
  else
    value = ""
  end
  local kit = current()
  kit.resp_ops[#kit.resp_ops + 1] = { op, name, value }
  refresh_response(kit)
end

function response.set_header(name, value)
  check(BEFORE_HEAD, "moongate.response.set_header")
  response_header_op(0, name, value)
end

function response.add_header(name, value)
  check(BEFORE_HEAD, "moongate.response.add_header")
  response_header_op(1, name, value)
end

function response.clear_header(name)
  check(BEFORE_HEAD, "moongate.response.clear_header")
  response_header_op(2, name)
end

function response.get_status()
  check(AFTER_HEAD, "moongate.response.get_status")
  return current().response.status
end

function response.get_header(name)
  check(AFTER_HEAD, "moongate.response.get_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  return upstream_header(current(), name)
end

function response.exit(status, body, headers)
  check(BEFORE_PROXY, "moongate.response.exit")
  if type(status) ~= "number" or status < 200 or status > 599 or status % 1 ~= 0 then
    error("status must be an integer between 200 and 599", 2)
  end
  local lines, ctype = {}, nil
  if headers ~= nil then
    if type(headers) ~= "table" then error("headers must be a table", 2) end
    for k, v in pairs(headers) do
      if type(k) ~= "string" or find(k, "[%s:]") then
        error("invalid header name: " .. tostring(k), 2)
      end
      if lower(k) == "content-type" then ctype = true end
      local vs = type(v) == "table" and v or { v }
      for _, one in ipairs(vs) do
        one = tostring(one)
        if find(one, "[\r\n]") then error("header value must not contain CR or LF", 2) end
        lines[#lines + 1] = { name = k, value = one }
      end
    end
  end
  if type(body) == "table" then
    local json, err = cjson.encode(body)
    if not json then error("cannot encode the body as JSON: " .. err, 2) end
    body = json
    if not ctype then
      lines[#lines + 1] = { name = "Content-Type", value = "application/json; charset=utf-8" }
    end
  elseif body ~= nil and type(body) ~= "string" then
    error("body must be a string, a table or nil", 2)
  end
  local kit = current()
  kit.exited, kit.exit_phase = true, phases.name(phases.current)
  kit.exit_status, kit.exit_body, kit.exit_lines = status, body or "", lines
  refresh_response(kit)
  yield(_M.EXIT)
end

-- body_filter: the kit calls the phase once per piece of the upstream body (see
-- kit:run); get_chunk sees the piece, set_chunk replaces it.

function response.get_chunk()
  check(phases.BODY_FILTER, "moongate.response.get_chunk")
  local f = current().filtering
  if not f then return nil, true end
  return f.chunk, f.eof
end

function response.set_chunk(chunk)
  check(phases.BODY_FILTER, "moongate.response.set_chunk")
  if type(chunk) ~= "string" then error("chunk must be a string", 2) end
  local f = current().filtering
  if not f then error("no body is being filtered", 2) end
  f.out = chunk
end

function response.get_raw_body()
  check(phases.BODY_FILTER, "moongate.response.get_raw_body")
  local chunk, eof = response.get_chunk()
  local kit = current()
  local parts = kit.raw_body_parts
  if not parts then
    parts = {}
    kit.raw_body_parts = parts
  end
  parts[#parts + 1] = chunk
  if not eof then
    response.set_chunk("")
    return nil
  end
  local body = concat(parts)
  kit.raw_body_parts = nil
  response.set_chunk(body)
  return body
end

function response.set_raw_body(body)
  check(phases.BODY_FILTER, "moongate.response.set_raw_body")
  response.set_chunk(body)
end

-- client -----------------------------------------------------------------------------------

local client = moongate.client

function client.get_ip()
  check(REQUEST, "moongate.client.get_ip")
  return current().client.ip
end

function client.get_forwarded_ip()
  check(REQUEST, "moongate.client.get_forwarded_ip")
  local c = current().client
  return c.forwarded_ip or c.ip
end

function client.get_port()
  check(REQUEST, "moongate.client.get_port")
  return current().client.port
end

function client.authenticate(consumer, credential)
  check(BEFORE_PROXY, "moongate.client.authenticate")
  if consumer ~= nil and type(consumer) ~= "table" then
    error("consumer must be a table or nil", 2)
  end
  if credential ~= nil and type(credential) ~= "table" then
    error("credential must be a table or nil", 2)
  end
  local kit = current()
  kit.consumer, kit.credential = consumer, credential
end

function client.load_consumer(key, by_username)
  check(bit.bor(BEFORE_PROXY, phases.TIMER), "moongate.client.load_consumer")
  if type(key) ~= "string" then error("key must be a string", 2) end
  for _, c in ipairs(current().consumers or {}) do
    local id = c.id or c.username or c.custom_id
    if (by_username and c.username == key)
       or (not by_username and (id == key or c.custom_id == key)) then
      return c
    end
  end
  return nil, "consumer not found"
end

function client.get_consumer()
  check(REQUEST, "moongate.client.get_consumer")
  return current().consumer
end

function client.get_credential()
  check(REQUEST, "moongate.client.get_credential")
  return current().credential
end

-- client.tls: the kit's `client_certificate` option stands for what the gateway parsed
local tls = {}
client.tls = tls

function tls.get_full_client_certificate_chain()
  check(REQUEST, "moongate.client.tls.get_full_client_certificate_chain")
  local c = current().client.cert
  return c and c.chain
end

function tls.get_client_verify()
  check(REQUEST, "moongate.client.tls.get_client_verify")
  local c = current().client.cert
  return c and c.verify or "NONE"
end

function tls.get_client_certificate()
  check(REQUEST, "moongate.client.tls.get_client_certificate")
  local c = current().client.cert
  if not c then return nil end
  local sans = { dns = {}, uri = {}, email = {}, ip = {} }
  local list = {}
  for _, san in ipairs(c.san_list or {}) do
    local kind, value = match(san, "^(%a+):(.*)$")
    local t = kind and sans[lower(kind)]
    if t then
      t[#t + 1] = value
      list[#list + 1] = san
    end
  end
  return { subject_dn = c.subject_dn or "", issuer_dn = c.issuer_dn or "", cn = c.cn or "",
           serial = c.serial or "01", fingerprint = c.fingerprint or format("%064d", 0),
           sans = sans, san_list = list }
end

function tls.verify_client(ca_ids, allow_partial_chain)
  check(REQUEST, "moongate.client.tls.verify_client")
  if type(ca_ids) ~= "table" then error("ca_ids must be an array of ids", 2) end
  local c = current().client.cert
  if not c then return nil, "no certificate" end
  if c.verified then return true end
  return false, "failed verification"
end

-- ctx --------------------------------------------------------------------------------------

moongate.ctx = setmetatable({}, {
  __index = function(_, k)
    if k == "shared" then
      check(REQUEST, "moongate.ctx.shared")
      return current().ctx.shared
    elseif k == "plugin" then
      check(REQUEST, "moongate.ctx.plugin")
      return current().running_ctx
    end
  end,
  __newindex = function()
    error("moongate.ctx fields cannot be replaced; use moongate.ctx.shared", 2)
  end,
})

-- log --------------------------------------------------------------------------------------

local log = moongate.log

local function logger(level)
  return function(...)
    local kit = active
    if not kit or level < kit.log_level then return end
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do parts[i] = tostring(parts[i]) end
    local msg = concat(parts, "", 1, n)
    local name = kit.plugin_name
    if name then msg = "[" .. name .. "] " .. msg end
    kit.logs[#kit.logs + 1] = { level = LEVEL_NAMES[level], msg = msg }
  end
end

for name, level in pairs(LEVELS) do
  log[name] = logger(level)
end
log.error = log.err

local REDACT = { authorization = true, ["proxy-authorization"] = true, cookie = true,
                 ["set-cookie"] = true, apikey = true }

function log.redact_header(name)
  check(phases.BEFORE_PROXY, "moongate.log.redact_header")
  if type(name) ~= "string" then error("header name must be a string", 2) end
  local kit = current()
  kit.secret_headers = kit.secret_headers or {}
  kit.secret_headers[name:lower()] = true
end

function log.serialize()
  check(phases.LOG, "moongate.log.serialize")
  local headers = request.get_headers()
  local kit = current()
  local secret = kit.secret_headers
  for k in pairs(headers) do
    if REDACT[k] or (secret and secret[k]) then headers[k] = "REDACTED" end
  end
  local consumer = kit.consumer
  return {
    request = { method = request.get_method(), path = request.get_path(), headers = headers,
                id = request.get_id() },
    response = { status = kit.response.status },
    route = { name = kit.route.name or "" },
    service = { name = kit.service.name or "" },
    consumer = consumer and { id = consumer.id, username = consumer.username,
                              custom_id = consumer.custom_id } or nil,
    client_ip = client.get_forwarded_ip(),
    started_at = kit.started_at,
  }
end

-- shared dictionaries ---------------------------------------------------------------------
-- moongate.shared.<name>: lua_shared_dict's API over a Lua table. The dictionaries belong to
-- the module, not to a kit, so that what one request stores the next one sees (declare them
-- with pdk.shared_dict or the `shared_dicts` option; pdk.flush_shared_dicts forgets them).
-- TTLs follow the kits' clock (moongate.now; moongate.sleep advances it). There is no memory
-- pressure: nothing is evicted, `forcible` is always false.

local dicts = {}
local use_counter = 0
local last_clock      -- the latest time any kit reached (kit clocks never go back)

local function now()
  if active then return active.clock end
  return last_clock or os.time()
end

local Dict = {}
Dict.__index = Dict
_M.Dict = Dict

local SIZES = { k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 }

local function check_key(key)
  if type(key) == "number" then key = tostring(key) end
  if type(key) ~= "string" then error("key must be a string", 3) end
  if #key == 0 then error("key must not be empty", 3) end
  if #key > 65535 then error("key too long", 3) end
  return key
end

local function live(self, key)
  local it = self.items[key]
  if it and it.expires ~= 0 and it.expires <= now() then return nil, it end
  return it
end

local function touch(it)
  use_counter = use_counter + 1
  it.used = use_counter
end

function Dict:get(key)
  key = check_key(key)
  local it = live(self, key)
  if not it then return nil end
  touch(it)
  return it.value
end

function Dict:get_stale(key)
  key = check_key(key)
  local it, expired = live(self, key)
  if it then return it.value, nil, false end
  if expired then return expired.value, nil, true end
  return nil, nil, false
end

local function store(self, mode, key, value, exptime)
  key = check_key(key)
  if exptime ~= nil and (type(exptime) ~= "number" or exptime < 0) then
    error("exptime must be a non-negative number", 3)
  end
  local vt = type(value)
  if vt ~= "string" and vt ~= "number" and vt ~= "boolean" and vt ~= "nil" then
    error("value must be nil, a boolean, a number or a string", 3)
  end
  local it = live(self, key)
  if mode == "add" and it then return false, "exists", false end
  if mode == "replace" and not it then return false, "not found", false end
  if value == nil then
    self.items[key] = nil
    return true, nil, false
  end
  it = { value = value, expires = (exptime or 0) > 0 and now() + exptime or 0 }
  touch(it)
  self.items[key] = it
  return true, nil, false
end

function Dict:set(key, value, exptime) return store(self, "set", key, value, exptime) end
function Dict:add(key, value, exptime) return store(self, "add", key, value, exptime) end
function Dict:replace(key, value, exptime) return store(self, "replace", key, value, exptime) end
function Dict:safe_set(key, value, exptime) return store(self, "set", key, value, exptime) end
function Dict:safe_add(key, value, exptime)
  if self:get(key) ~= nil then return false, "exists", false end
  return store(self, "set", key, value, exptime)
end
function Dict:delete(key) store(self, "set", key, nil) end

function Dict:incr(key, value, init, init_ttl)
  key = check_key(key)
  if type(value) ~= "number" then error("value must be a number", 2) end
  if init ~= nil and type(init) ~= "number" then error("init must be a number", 2) end
  local it = live(self, key)
  if not it then
    if init == nil then return nil, "not found", false end
    it = { value = init, expires = (init_ttl or 0) > 0 and now() + init_ttl or 0 }
    self.items[key] = it
  elseif type(it.value) ~= "number" then
    return nil, "not a number", false
  end
  it.value = it.value + value
  touch(it)
  return it.value, nil, false
end

function Dict:ttl(key)
  key = check_key(key)
  local it = live(self, key)
  if not it then return nil, "not found" end
  if it.expires == 0 then return 0 end
  local t = it.expires - now()
  return t < 0 and 0 or t
end

function Dict:expire(key, exptime)
  key = check_key(key)
  if type(exptime) ~= "number" or exptime < 0 then
    error("exptime must be a non-negative number", 2)
  end
  local it = live(self, key)
  if not it then return nil, "not found" end
  it.expires = exptime > 0 and now() + exptime or 0
  return true
end

function Dict:flush_all() self.items = {} end

function Dict:flush_expired(max)
  local n = 0
  for key, it in pairs(self.items) do
    if max and max > 0 and n >= max then break end
    if it.expires ~= 0 and it.expires <= now() then
      self.items[key] = nil
      n = n + 1
    end
  end
  return n
end

function Dict:get_keys(max)
  max = max or 1024
  local list = {}
  for key in pairs(self.items) do
    local it = live(self, key)
    if it then list[#list + 1] = { key = key, used = it.used } end
  end
  sort(list, function(a, b) return a.used > b.used end)
  local keys = {}
  for i, e in ipairs(list) do
    if max > 0 and i > max then break end
    keys[i] = e.key
  end
  return keys
end

function Dict:capacity() return self.size end

function Dict:free_space()
  local used = 0
  for key, it in pairs(self.items) do
    used = used + 64 + #key + (type(it.value) == "string" and #it.value or 8)
  end
  return used < self.size and self.size - used or 0
end

--- Declares a shared dictionary (the `shared_dicts` setting), or returns the one declared.
-- @param name its name: moongate.shared.<name>
-- @param size "16m", "512k" or a number of bytes (default "1m")
function _M.shared_dict(name, size)
  if type(name) ~= "string" or name == "" then error("name must be a non-empty string", 2) end
  local d = dicts[name]
  if d then return d end
  size = size or "1m"
  local bytes = tonumber(size)
  if not bytes and type(size) == "string" then
    local n, unit = match(lower(size), "^(%d+)([kmg]?)$")
    bytes = n and tonumber(n) * (SIZES[unit] or 1)
  end
  if not bytes or bytes <= 0 then error("size must be a number of bytes or like \"16m\"", 2) end
  d = setmetatable({ name = name, size = bytes, items = {} }, Dict)
  dicts[name] = d
  return d
end

--- Forgets every shared dictionary (call it between tests that must not share state).
function _M.flush_shared_dicts()
  dicts = {}
end

moongate.shared = setmetatable({}, {
  __index = function(_, name)
    if type(name) ~= "string" then return nil end
    return dicts[name]
  end,
})

-- timers -----------------------------------------------------------------------------------
-- moongate.timer: the kit keeps the timers a handler starts (kit.timers) and runs the due
-- ones when the test says so: kit:run_timers(seconds).

local timer = {}
moongate.timer = timer

local function start_timer(delay, every, fn, ...)
  if type(fn) ~= "function" then error("fn must be a function", 3) end
  local kit = active
  if not kit then return nil, "too many pending timers (or no event loop here)" end
  kit.timer_seq = kit.timer_seq + 1
  kit.timers[#kit.timers + 1] = { seq = kit.timer_seq, fn = fn, args = { ... },
                                  n = select("#", ...), plugin = kit.plugin_name,
                                  due = kit.clock + delay, every = every }
  return true
end

function timer.at(delay, fn, ...)
  if type(delay) ~= "number" or delay < 0 then error("delay must be a non-negative number", 2) end
  return start_timer(delay, 0, fn, ...)
end

function timer.every(interval, fn, ...)
  if type(interval) ~= "number" or interval <= 0 then
    error("interval must be a positive number", 2)
  end
  return start_timer(interval, interval, fn, ...)
end

function timer.pending_count()
  return active and #active.timers or 0
end

-- sockets ----------------------------------------------------------------------------------
-- moongate.socket: cosockets over LuaSocket (loaded on first use). They block (a unit test
-- has nothing else to do meanwhile) but take the same arguments, raise the same errors and
-- return the same results: 1 / bytes / data, or nil, "timeout" | "closed" | "connection
-- refused" ..., partial. TLS needs LuaSec. The keepalive pool belongs to the module.

local MAX_MS = 2147483647
local MAX_PATTERN = 8191
local DEFAULT_TIMEOUT, DEFAULT_KEEPALIVE_POOL = 60000, 30
local pools = {}      -- pool name → list of idle connections, most recent last

local smethods = {}
local smt = { __index = smethods, __name = "moongate.socket.tcp" }
smt.__tostring = function(self)
  return "moongate.socket.tcp (" .. (self.conn and "connected" or "closed") .. ")"
end
_M.socket_methods = smethods

local function sock_of(self, fn)
  if getmetatable(self) ~= smt then
    error("bad argument #1 to '" .. fn .. "' (a socket expected; call it as sock:" .. fn
          .. "(...))", 3)
  end
  return self.conn
end

local function timeout_arg(v, fn, i)
  if v == nil then return DEFAULT_TIMEOUT end
  if type(v) ~= "number" or v ~= v then
    error("bad argument #" .. i .. " to '" .. fn .. "' (timeout in ms must be a number)", 3)
  end
  if v <= 0 then return DEFAULT_TIMEOUT end
  return v > MAX_MS and MAX_MS or math.ceil(v)
end

local socket_tcp = {}
moongate.socket = socket_tcp
-- the HTTP and Redis clients are the gateway's own modules: they find the kit's cosockets
-- through the global `moongate` when they connect
moongate.http = require "moongate.http"
moongate.redis = require "moongate.redis"

function socket_tcp.tcp()
  check(YIELDABLE, "moongate.socket.tcp")
  return setmetatable({ conn = false, ct = DEFAULT_TIMEOUT, st = DEFAULT_TIMEOUT,
                        rt = DEFAULT_TIMEOUT }, smt)
end

function smethods.settimeout(self, ms)
  sock_of(self, "settimeout")
  local v = timeout_arg(ms, "settimeout", 1)
  self.ct, self.st, self.rt = v, v, v
end

function smethods.settimeouts(self, connect_ms, send_ms, read_ms)
  sock_of(self, "settimeouts")
  self.ct = timeout_arg(connect_ms, "settimeouts", 1)
  self.st = timeout_arg(send_ms, "settimeouts", 2)
  self.rt = timeout_arg(read_ms, "settimeouts", 3)
end

local function close_conn(conn)
  if conn and conn.s then conn.s:close() end
end

-- the wording of the runtime (strerror, lower-cased first letter) for LuaSocket's errors
local function net_error(err, host)
  err = tostring(err)
  if find(err, "not known", 1, true) or find(err, "not found", 1, true)
     or find(err, "resolve", 1, true) then
    return host .. " could not be resolved (" .. err .. ")"
  end
  return err
end

function smethods.connect(self, host, port, opts)
  check(YIELDABLE, "sock:connect")
  local old = sock_of(self, "connect")
  if type(host) ~= "string" or host == "" then
    error("bad argument #1 to 'connect' (host must be a non-empty string)", 2)
  end
  if sub(host, 1, 5) == "unix:" then
    return nil, "unix domain sockets are not supported"
  end
  local p = tonumber(port)
  if not p or p % 1 ~= 0 or p < 1 or p > 65535 then
    error("bad argument #2 to 'connect' (port must be an integer in 1..65535)", 2)
  end
  local pool, pool_size
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #3 to 'connect' (options must be a table)", 2)
    end
    pool, pool_size = opts.pool, opts.pool_size
    if pool ~= nil and (type(pool) ~= "string" or pool == "") then
      error("bad argument #3 to 'connect' (opts.pool must be a non-empty string)", 2)
    end
    if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then
      error("bad argument #3 to 'connect' (opts.pool_size must be a positive number)", 2)
    end
  end
  if old then
    close_conn(old)
    self.conn = false
  end
  pool = pool or (host .. ":" .. p)
  self.pool_name, self.pool_size = pool, pool_size and math.floor(pool_size) or nil

  local idle = pools[pool]
  if idle and #idle > 0 then
    local conn = table.remove(idle)
    conn.reused = conn.reused + 1
    self.conn = conn
    return 1
  end
  local s = require("socket").tcp()
  s:settimeout(self.ct / 1000)
  local ok, err = s:connect(host, p)
  if not ok then
    s:close()
    return nil, net_error(err, host)
  end
  s:setoption("tcp-nodelay", true)
  self.conn = { s = s, buf = "", reused = 0 }
  return 1
end

function smethods.sslhandshake(self, reused_session, server_name, ssl_verify)
  check(YIELDABLE, "sock:sslhandshake")
  local conn = sock_of(self, "sslhandshake")
  if reused_session ~= nil and reused_session ~= false and type(reused_session) ~= "cdata"
     and type(reused_session) ~= "table" then
    error("bad argument #1 to 'sslhandshake' (a session, nil or false expected)", 2)
  end
  if server_name ~= nil and type(server_name) ~= "string" then
    error("bad argument #2 to 'sslhandshake' (server name must be a string)", 2)
  end
  if not conn then
    return nil, "closed"
  end
  if conn.tls then
    return reused_session == false or conn.tls
  end
  local okl, ssl = pcall(require, "ssl")
  if not okl then return nil, "handshake failed (LuaSec is not installed)" end
  local params = { mode = "client", protocol = "any", options = "all",
                   verify = ssl_verify and "peer" or "none" }
  if ssl_verify then
    params.cafile = os.getenv("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
  end
  local wrapped, err = ssl.wrap(conn.s, params)
  if not wrapped then return nil, "handshake failed: " .. tostring(err) end
  if server_name and wrapped.sni then wrapped:sni(server_name) end
  wrapped:settimeout(self.ct / 1000)
  local ok, herr = wrapped:dohandshake()
  if not ok then return nil, "handshake failed: " .. tostring(herr) end
  conn.s, conn.tls = wrapped, { session = true }
  if reused_session == false then return true end
  return conn.tls
end


function smethods.send(self, data)
  check(YIELDABLE, "sock:send")
  local conn = sock_of(self, "send")
  data = codec.send_data(data)
  if not conn then
    return nil, "closed"
  end
  conn.s:settimeout(self.st / 1000)
  local n, err = conn.s:send(data)
  if not n then
    close_conn(conn)
    self.conn = false
    return nil, net_error(err, "")
  end
  return #data
end

-- Reads more into conn.buf: true, or nil and "timeout" / "closed" / another error.
local function fill(self, conn)
  local s = conn.s
  s:settimeout(self.rt / 1000)
  local first, err = s:receive(1)
  if not first then return nil, err end
  s:settimeout(0)
  local more, _, partial = s:receive(65536)
  conn.buf = conn.buf .. first .. (more or partial or "")
  return true
end

local function take(conn, n)
  local data = sub(conn.buf, 1, n)
  conn.buf = sub(conn.buf, n + 1)
  return data
end

-- mode: "line", "size" (n), "all", "any" (n), "until" (pattern, inclusive)
local function recv(self, conn, mode, n, pattern, inclusive)
  while true do
    local buf = conn.buf
    if mode == "line" then
      local lf = find(buf, "\n", 1, true)
      if lf then
        local line = take(conn, lf)
        return (gsub(sub(line, 1, -2), "\r", ""))
      end
    elseif mode == "size" then
      if #buf >= n then return take(conn, n) end
    elseif mode == "any" then
      if #buf > 0 then return take(conn, n) end
    elseif mode == "until" then
      local at = find(buf, pattern, 1, true)
      if at then
        local data = take(conn, at - 1 + #pattern)
        return inclusive and data or sub(data, 1, at - 1)
      end
    end
    local ok, err = fill(self, conn)
    if not ok then
      if mode == "all" and err == "closed" then
        return take(conn, #conn.buf)
      end
      return nil, err, take(conn, #conn.buf)
    end
  end
end

function smethods.receive(self, pattern)
  check(YIELDABLE, "sock:receive")
  local conn = sock_of(self, "receive")
  local mode, n = "line", 0
  if pattern == nil or pattern == "*l" then
    mode = "line"
  elseif pattern == "*a" then
    mode = "all"
  else
    n = tonumber(pattern)
    if not n or n < 0 then
      error("bad argument #1 to 'receive' (bad pattern: " .. tostring(pattern) .. ")", 2)
    end
    mode, n = "size", math.floor(n)
  end
  if not conn then
    return nil, "closed", ""
  end
  if mode == "size" and n == 0 then
    return ""
  end
  return recv(self, conn, mode, n)
end

function smethods.receiveany(self, max)
  check(YIELDABLE, "sock:receiveany")
  local conn = sock_of(self, "receiveany")
  local n = tonumber(max)
  if not n or n < 1 then
    error("bad argument #1 to 'receiveany' (max must be a positive number)", 2)
  end
  if not conn then
    return nil, "closed", ""
  end
  return recv(self, conn, "any", math.floor(n))
end

function smethods.receiveuntil(self, pattern, opts)
  sock_of(self, "receiveuntil")
  if type(pattern) ~= "string" or pattern == "" or #pattern > MAX_PATTERN then
    error("bad argument #1 to 'receiveuntil' (pattern must be a string of 1 to " .. MAX_PATTERN
          .. " bytes)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'receiveuntil' (options must be a table)", 2)
  end
  local inclusive = opts and opts.inclusive
  local plen = #pattern
  local finished = false
  return function(size)
    check(YIELDABLE, "the receiveuntil iterator")
    local conn = self.conn
    local n = 0
    if size ~= nil then
      n = tonumber(size)
      if not n or n < 0 then
        error("bad argument #1 to the receiveuntil iterator (size must be a number)", 2)
      end
      n = math.floor(n)
    end
    if not conn then
      return nil, "closed", ""
    end
    if n == 0 then
      return recv(self, conn, "until", 0, pattern, inclusive)
    end
    if finished then
      finished = false
      return nil
    end
    while true do
      local buf = conn.buf
      local at = find(buf, pattern, 1, true)
      if at and at - 1 <= n then
        local data = take(conn, at - 1 + plen)
        finished = true
        data = inclusive and data or sub(data, 1, at - 1)
        if data == "" then
          finished = false
          return nil
        end
        return data
      end
      if at or #buf - (plen - 1) >= n then
        return take(conn, n)        -- a piece; the pattern is further on
      end
      local ok, err = fill(self, conn)
      if not ok then
        return nil, err, take(conn, #conn.buf)
      end
    end
  end
end

function smethods.setkeepalive(self, timeout, pool_size)
  local conn = sock_of(self, "setkeepalive")
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'setkeepalive' (timeout must be a non-negative number)", 2)
  end
  if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then
    error("bad argument #2 to 'setkeepalive' (pool size must be a positive number)", 2)
  end
  if not conn then
    return nil, "closed"
  end
  if #conn.buf > 0 then
    return nil, "unread data in buffer"
  end
  local size = math.floor(pool_size or self.pool_size or DEFAULT_KEEPALIVE_POOL)
  local idle = pools[self.pool_name] or {}
  pools[self.pool_name] = idle
  idle[#idle + 1] = conn
  while #idle > size do close_conn(table.remove(idle, 1)) end
  self.conn = false
  return 1
end

function smethods.close(self)
  local conn = sock_of(self, "close")
  if not conn then
    return nil, "closed"
  end
  close_conn(conn)
  self.conn = false
  return 1
end

function smethods.getreusedtimes(self)
  local conn = sock_of(self, "getreusedtimes")
  if not conn then
    return nil, "closed"
  end
  return conn.reused
end

function smethods.setoption(self, option, value)
  sock_of(self, "setoption")
  if option == "tcp-nodelay" then
    return true
  end
  return nil, "unsupported option " .. tostring(option)
end

function socket_tcp.connect(host, port, opts)
  check(YIELDABLE, "moongate.socket.connect")
  local sock = socket_tcp.tcp()
  local ok, err = sock:connect(host, port, opts)
  if not ok then
    return nil, err
  end
  return sock
end

--- Closes the idle connections of the kit's keepalive pools.
function _M.close_socket_pools()
  for _, idle in pairs(pools) do
    for _, conn in ipairs(idle) do close_conn(conn) end
  end
  pools = {}
end

-- node, sleep, now ---------------------------------------------------------------------------

function moongate.node.get_id()
  return active and active.node_id or _M.NODE_ID
end

function moongate.node.get_worker_id()
  return active and active.worker_id or 0
end

-- tls (the certificate phase) ----------------------------------------------------------------
-- kit.sni is opts.sni; what set_cert chose lands in kit.tls_cert and kit.tls_key.

moongate.tls = {}

function moongate.tls.get_sni()
  check(phases.CERTIFICATE, "moongate.tls.get_sni")
  return current().sni
end

function moongate.tls.set_cert(cert, key)
  check(phases.CERTIFICATE, "moongate.tls.set_cert")
  if type(cert) ~= "string" or not find(cert, "-----BEGIN", 1, true) then
    error("moongate.tls.set_cert: the certificate must be PEM text", 2)
  end
  if type(key) ~= "string" or not find(key, "-----BEGIN", 1, true) then
    error("moongate.tls.set_cert: the key must be PEM text", 2)
  end
  local kit = current()
  kit.tls_cert, kit.tls_key = cert, key
  return true
end

-- upstream ----------------------------------------------------------------------------------
-- kit.upstreams is opts.upstreams: { name = { { target = "host:port", weight = 100,
-- health = "HEALTHY" | "UNHEALTHY" | "HEALTHCHECKS_OFF" (default), ip = (the host),
-- addresses = (a named target's: { { ip, health = (the target's) } }; {} is DNS_ERROR) } } }.

moongate.upstream = {}

function moongate.upstream.get_health(name)
  check(bor(phases.INIT_WORKER, REQUEST, phases.TIMER), "moongate.upstream.get_health")
  if type(name) ~= "string" then
    error("upstream name must be a string", 2)
  end
  local targets = active and active.upstreams[name]
  if not targets then return nil, "upstream not found" end
  local data = {}
  for i, t in ipairs(targets) do
    local host, port = match(t.target, "^%[?(.-)%]?:(%d+)$")
    local health, weight = t.health or "HEALTHCHECKS_OFF", t.weight or 100
    local addresses = {}
    for j, a in ipairs(t.addresses or { { ip = t.ip or host } }) do
      addresses[j] = { ip = a.ip, port = tonumber(port), health = a.health or health,
                       weight = weight }
    end
    if #addresses == 0 then health = "DNS_ERROR" end
    data[i] = {
      target = t.target, weight = weight, health = health, upstream = { name = name },
      data = { addresses = addresses },
    }
  end
  return { total = #data, node_id = active.node_id, data = data }
end

function moongate.node.get_worker_pid()
  return active and active.worker_pid or _M.WORKER_PID
end

--- Records the sleep and advances the kit's clock (moongate.now) instead of waiting.
function moongate.sleep(seconds)
  check(YIELDABLE, "moongate.sleep")
  if type(seconds) ~= "number" or seconds < 0 then
    error("seconds must be a non-negative number", 2)
  end
  local kit = current()
  kit.sleeps[#kit.sleeps + 1] = seconds
  kit.clock = kit.clock + seconds
  if not last_clock or kit.clock > last_clock then last_clock = kit.clock end
end

function moongate.now()
  return now()
end

-- ---- kits -------------------------------------------------------------------------------

_M.NODE_ID = "00000000-0000-4000-8000-00000000cafe"
_M.WORKER_PID = 4242

local Kit = {}
Kit.__index = Kit

local next_id = 0

local function opt(opts, key, want, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= want then
    error(format("opts.%s must be a %s", key, want), 3)
  end
  return v
end

--- A new request to run handlers against.
-- @param opts (all optional) `method` ("GET"), `path` ("/"; may carry "?query"), `query`
--   (raw string without "?", or a table encoded as service.request.set_query does),
--   `headers` ({ Name = "v" | { "v1", "v2" } } or { { "Name", "v" }, ... } to fix the
--   order), `host` ("localhost"), `scheme` ("http"), `port` (8000), `http_version` (1.1),
--   `body` (""), `client_body_buffer_size` (a larger body makes get_raw_body fail; default
--   no limit), `request_id` (32 hex digits), `client_ip` ("127.0.0.1"), `forwarded_ip` (default the
--   client ip), `client_port` (40000), `route` ({ name = }), `service` ({ name = }),
--   `consumer`, `credential` (as if authenticated already), `upstreams` (what
--   moongate.upstream.get_health reports: { name = { { target, weight, health, ip,
--   addresses } } }),
--   `node_id`, `worker_id` (0), `worker_pid`, `client_certificate` (what moongate.client.tls
--   sees: { chain = PEM, verify = "SUCCESS", verified = true (verify_client's answer),
--   subject_dn, issuer_dn, cn, serial, fingerprint, san_list = { "DNS:a.test", ... } }; nil:
--   no certificate), `now` (the clock moongate.now() starts from; default os.time(), or
--   later if an earlier kit slept past it), `log_level` ("debug": every line is kept;
--   "notice" keeps what the gateway's default log_level would), `shared_dicts` ({ name =
--   "1m" } or { "name" }: declares them with pdk.shared_dict)
-- @return the kit: `.request` (what the client sent), `.upstream_request` ({ method, path,
--   query, headers, body } after the plugins' changes; headers lower-cased, repeated ones
--   as lists), `.upstream_response`, `.response` ({ status, headers, body } the client gets),
--   `.exited` (true after moongate.response.exit; `.exit_phase` says where), `.logs`
--   ({ level =, msg = } in order), `.sleeps`, `.ctx` (`shared`, and `plugin`: the last run
--   plugin's), `.consumer`, `.credential`, `.clock`
function _M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("opts must be a table", 2) end
  local path = opt(opts, "path", "string", "/")
  local query
  local q = find(path, "?", 1, true)
  if q then
    path, query = sub(path, 1, q - 1), sub(path, q + 1)
  end
  if opts.query ~= nil then
    if type(opts.query) == "table" then
      query = encode_query(opts.query)
    elseif type(opts.query) == "string" then
      query = gsub(opts.query, "^%?", "")
    else
      error("opts.query must be a string or a table", 2)
    end
  end
  query = query or ""
  local method = opt(opts, "method", "string", "GET")
  local body = opt(opts, "body", "string", "")
  local headers = header_lines(opts.headers, "opts.headers")
  local log_level = LEVELS[opt(opts, "log_level", "string", "debug")]
  if not log_level then
    error("opts.log_level must be one of debug, info, notice, warn, err, crit", 2)
  end
  local request_id = opt(opts, "request_id", "string", nil)
  if not request_id then
    next_id = next_id + 1
    request_id = format("%032x", next_id)
  end
  local clock = opt(opts, "now", "number", nil)
  if not clock then
    clock = os.time()
    if last_clock and last_clock > clock then clock = last_clock end
  end
  local sd = opt(opts, "shared_dicts", "table", {})
  for k, v in pairs(sd) do
    if type(k) == "number" then _M.shared_dict(v) else _M.shared_dict(k, v) end
  end

  local kit = setmetatable({
    request = {
      method = method, path = path, query = query, headers = headers,
      host = opt(opts, "host", "string", "localhost"),
      scheme = opt(opts, "scheme", "string", "http"),
      port = opt(opts, "port", "number", 8000),
      http_version = opt(opts, "http_version", "number", 1.1),
      id = request_id,
      body = body,
      body_limit = opt(opts, "client_body_buffer_size", "number", math.huge),
    },
    client = {
      ip = opt(opts, "client_ip", "string", "127.0.0.1"),
      forwarded_ip = opt(opts, "forwarded_ip", "string", nil),
      port = opt(opts, "client_port", "number", 40000),
      cert = opt(opts, "client_certificate", "table", nil),
    },
    route = opt(opts, "route", "table", {}),
    service = opt(opts, "service", "table", {}),
    consumer = opt(opts, "consumer", "table", nil),
    credential = opt(opts, "credential", "table", nil),
    upstreams = opt(opts, "upstreams", "table", {}),
    node_id = opt(opts, "node_id", "string", _M.NODE_ID),
    worker_id = opt(opts, "worker_id", "number", 0),
    worker_pid = opt(opts, "worker_pid", "number", _M.WORKER_PID),
    clock = clock,
    started_at = clock,
    log_level = log_level,
    upstream_request = { method = method, path = path, query = query,
                         headers = lines_to_map(headers), body = body },
    upstream_response = nil,
    body_chunks = nil,   -- the response body in pieces, as body_filter sees and leaves it
    response = { headers = {} },
    exited = false,
    logs = {},
    sleeps = {},
    ctx = { shared = {} },
    resp_ops = {},
    timers = {},       -- pending moongate.timer timers, in the order started
    timer_seq = 0,
    plugin_ctxs = {},  -- handler (or name) → its moongate.ctx.plugin table
    configs = {},      -- handler → the config it last ran with
    names = {},        -- handler → the plugin name (from its schema)
  }, Kit)
  kit.consumers = opts.consumers or {}   -- what client.load_consumer finds
  kit.sni = opts.sni                       -- what tls.get_sni returns (certificate phase)
  return kit
end

--- Validates a plugin config against the plugin's schema, as the gateway does at load.
-- @param sch the table the plugin's schema.lua returns (raises if it is malformed)
-- @param conf the config (nil: empty)
-- @return the config with defaults filled, or nil and the list of "config.PATH: message"
function _M.validate(sch, conf)
  if type(sch) ~= "table" then error("schema must be a table", 2) end
  local ok, err = schema.check_schema(sch, sch.name)
  if not ok then error(err, 2) end
  return schema.validate_plugin_config(sch, conf, "config")
end

--- Sets the response the upstream answered with, seen from header_filter on
-- (moongate.response.get_status/get_header, moongate.service.response.*) and filtered by
-- body_filter. Without it, a phase after the head sees 200 with no headers and no body.
-- @param res { status = 200, headers = { Name = "v" | { ... } } or { { "Name", "v" } },
--   body = "..." or chunks = { "...", ... } (the pieces body_filter is called with) }
-- @return the kit
function Kit:set_upstream_response(res)
  res = res or {}
  if type(res) ~= "table" then error("the upstream response must be a table", 2) end
  if self.exited then
    error("the request was ended by moongate.response.exit: the upstream was never called", 2)
  end
  local status = res.status or 200
  if type(status) ~= "number" or status < 100 or status > 599 or status % 1 ~= 0 then
    error("status must be an integer between 100 and 599", 2)
  end
  if res.body ~= nil and type(res.body) ~= "string" then
    error("body must be a string", 2)
  end
  local chunks = {}
  if res.chunks ~= nil then
    if type(res.chunks) ~= "table" then error("chunks must be a list of strings", 2) end
    for i, c in ipairs(res.chunks) do
      if type(c) ~= "string" then error("chunks must be a list of strings", 2) end
      chunks[i] = c
    end
  elseif res.body ~= nil and res.body ~= "" then
    chunks[1] = res.body
  end
  self.body_chunks = chunks
  self.upstream_response = { status = status, body = concat(chunks),
                             headers = lines_to_map(header_lines(res.headers, "headers")) }
  refresh_response(self)
  return self
end

local function pack(...)
  return { n = select("#", ...), ... }
end

local VALID_PHASE = { certificate = true }
for _, p in ipairs(phases.ORDER) do VALID_PHASE[p] = true end

local filter_body

local function check_phase(phase)
  if type(phase) ~= "string" or not VALID_PHASE[phase] then
    error("unknown phase '" .. tostring(phase) .. "' (one of: " .. concat(phases.ORDER, ", ")
          .. ")", 3)
  end
end

-- Runs fn(...) in a coroutine as code of `phase`, with the kit's PDK as the globals; the
-- plugin's name (log prefix) and moongate.ctx.plugin table are given by the caller.
local function exec(kit, phase, name, pctx, fn, ...)
  if kit.exited and phase ~= "log" and phase ~= "init_worker" then
    error("the request was ended by moongate.response.exit in the " .. kit.exit_phase
          .. " phase: only the log phase runs after it", 3)
  end
  if not kit.upstream_response and not kit.exited and (phase == "header_filter"
     or phase == "body_filter" or phase == "log") then
    kit:set_upstream_response({})
  end

  local saved = { active, phases.current, rawget(_G, "moongate"), rawget(_G, "kong"),
                  kit.plugin_name, kit.running_ctx }
  active, phases.current = kit, phases.BY_NAME[phase]
  _G.moongate, _G.kong = moongate, moongate
  kit.plugin_name, kit.running_ctx = name, pctx
  local co = co_create(fn)
  local res = pack(co_resume(co, ...))
  active, phases.current, _G.moongate, _G.kong, kit.plugin_name, kit.running_ctx =
    saved[1], saved[2], saved[3], saved[4], saved[5], saved[6]

  if not res[1] then
    kit.error = res[2]
    error(res[2], 0)   -- the handler's own error, as it raised it
  end
  if co_status(co) == "suspended" then
    if res[2] == _M.EXIT and kit.exited then
      return
    end
    error("the " .. phase .. " handler yielded outside the PDK (a real gateway would never "
          .. "resume it)", 3)
  end
  return unpack(res, 2, res.n)
end

-- Runs `once()` per piece of the body (a body without pieces: once with "" as the last),
-- each seeing its piece through moongate.response.get_chunk and replacing it with
-- set_chunk; the output pieces become the body the client gets (and the next filter sees).
-- Returns what the last call returned.
function filter_body(kit, chunks, once)
  if not kit.upstream_response and not kit.exited then kit:set_upstream_response({}) end
  if kit.exited then return once() end    -- raises: only log runs after exit
  chunks = chunks or {}
  local n = #chunks
  local list = n > 0 and chunks or { "" }
  local out, res = {}, nil
  for i = 1, #list do
    kit.filtering = { chunk = list[i], eof = i == #list }
    local r = pack(pcall(once))
    local f = kit.filtering
    kit.filtering = nil
    if not r[1] then error(r[2], 0) end
    res = r
    out[i] = f.out or f.chunk
  end
  kit.body_chunks = out
  refresh_response(kit)
  return unpack(res, 2, res.n)
end

-- the moongate.ctx.plugin table of code run with kit:call (one per kit)
local CALL_CTX = {}

--- Runs `fn(...)` as code of the given phase: the globals `moongate` and `kong` are the
-- kit's PDK, phase checks apply, `exit` ends it. A way to try single PDK calls:
-- `kit:call("access", function() return moongate.request.get_path() end)`.
-- @return what fn returned (nothing after exit); raises what fn raised
function Kit:call(phase, fn, ...)
  check_phase(phase)
  if type(fn) ~= "function" then error("fn must be a function", 2) end
  local pctx = self.plugin_ctxs[CALL_CTX]
  if not pctx then
    pctx = {}
    self.plugin_ctxs[CALL_CTX] = pctx
  end
  if phase == "body_filter" then   -- one call with the whole body, as the last piece
    local args = pack(...)
    return filter_body(self, { concat(self.body_chunks or {}) }, function()
      return exec(self, phase, nil, pctx, fn, unpack(args, 1, args.n))
    end)
  end
  return exec(self, phase, nil, pctx, fn, ...)
end

--- Runs one phase of a plugin handler, as the gateway would: `handler:<phase>(conf)`.
-- @param handler the table the plugin's handler.lua returns
-- @param phase "init_worker", "rewrite", "access", "header_filter", "body_filter" or "log"
-- @param conf the plugin config; nil: the config this handler ran with last on this kit
--   (or {})
-- @param sch optional: the plugin's schema; conf is then validated and its defaults filled
--   (raises the "config.PATH: message" lines when invalid), and log lines carry the
--   plugin's name as the gateway's do
-- @return the kit (a handler without that phase is skipped, as the gateway does)
function Kit:run(handler, phase, conf, sch)
  if type(handler) ~= "table" then error("handler must be a table", 2) end
  check_phase(phase)
  if sch ~= nil then
    if type(sch) ~= "table" then error("schema must be a table", 2) end
    local ok, err = schema.check_schema(sch, sch.name)
    if not ok then error(err, 2) end
    local config, errs = schema.validate_plugin_config(sch, conf, "config")
    if not config then error(concat(errs, "\n"), 2) end
    conf = config
    self.names[handler] = sch.name
  elseif conf == nil then
    conf = self.configs[handler] or {}
  end
  if type(conf) ~= "table" then error("conf must be a table", 2) end
  self.configs[handler] = conf

  local fn = handler[phase]
  if fn == nil then return self end
  if type(fn) ~= "function" then error("handler." .. phase .. " must be a function", 2) end

  local name = self.names[handler]
  local pctx = self.plugin_ctxs[handler]
  if not pctx then
    pctx = {}
    self.plugin_ctxs[handler] = pctx
    if name then self.plugin_ctxs[name] = pctx end
  end
  self.ctx.plugin = pctx
  if phase == "body_filter" then
    filter_body(self, self.body_chunks, function()
      exec(self, phase, name, pctx, fn, handler, conf)
    end)
  else
    exec(self, phase, name, pctx, fn, handler, conf)
  end
  return self
end

--- Moves the kit's clock on by `seconds` (default 0) and runs every moongate.timer timer
-- due by then, earliest first, each in its own coroutine in the timer phase, with
-- (premature = false, ...) as the gateway does; a periodic timer runs once per elapsed
-- interval. A failing timer is logged as the gateway logs it ("[plugin] timer failed: ...").
-- @return how many runs there were, and the list of the errors raised
function Kit:run_timers(seconds)
  seconds = seconds or 0
  if type(seconds) ~= "number" or seconds < 0 then
    error("seconds must be a non-negative number", 2)
  end
  local deadline = self.clock + seconds
  local ran, errs = 0, {}
  while ran < 10000 do
    local t, at
    for i, x in ipairs(self.timers) do
      if x.due <= deadline and (not t or x.due < t.due or (x.due == t.due and x.seq < t.seq)) then
        t, at = x, i
      end
    end
    if not t then break end
    if t.due > self.clock then self.clock = t.due end   -- the time it runs at
    if t.every == 0 then
      table.remove(self.timers, at)
    else
      t.due = t.due + t.every
    end
    ran = ran + 1
    local saved = { active, phases.current, rawget(_G, "moongate"), rawget(_G, "kong"),
                    self.plugin_name }
    active, phases.current = self, phases.TIMER
    _G.moongate, _G.kong = moongate, moongate
    self.plugin_name = t.plugin
    local co = co_create(t.fn)
    local ok, err = co_resume(co, false, unpack(t.args, 1, t.n))
    if ok and co_status(co) == "suspended" then
      ok, err = false, "the timer yielded outside the PDK (a real gateway would never resume it)"
    end
    if not ok then
      errs[#errs + 1] = err
      local msg = (t.plugin and ("[" .. t.plugin .. "] ") or "") .. "timer failed: "
                  .. tostring(err)
      self.logs[#self.logs + 1] = { level = "err", msg = msg }
    end
    active, phases.current, _G.moongate, _G.kong, self.plugin_name =
      saved[1], saved[2], saved[3], saved[4], saved[5]
  end
  if deadline > self.clock then self.clock = deadline end
  if not last_clock or self.clock > last_clock then last_clock = self.clock end
  return ran, errs
end

--- The moongate.ctx.plugin table of a handler (or plugin name) on this kit, or nil.
function Kit:plugin_ctx(handler)
  return self.plugin_ctxs[handler]
end

--- The first log entry whose message matches a Lua pattern (and level, if given), or nil.
function Kit:find_log(pattern, level)
  for _, e in ipairs(self.logs) do
    if (level == nil or e.level == level) and find(e.msg, pattern) then return e end
  end
  return nil
end

return _M
