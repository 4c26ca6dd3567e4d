--- moongate.http: an HTTP/1.1 client on cosockets (moongate.socket.tcp), in the manner of
-- lua-resty-http. Every wait parks the running request, never the worker. One object holds
-- one connection at a time; `request_uri()` does connect, request, read and keepalive in one
-- call, the lower-level `connect()`, `request()`, `res.body_reader` / `res:read_body()` and
-- `set_keepalive()` stream. Network failures and bad responses are returned as
-- `nil, "message"` (the socket's words: "connection refused", "timeout", "closed"; ours:
-- "invalid status line", "invalid response header", ...); misuse (a CR or LF in a header, a
-- body of the wrong type) raises.
--
--   local httpc = moongate.http.new()
--   httpc:set_timeouts(1000, 1000, 3000)
--   local res, err = httpc:request_uri("http://auth.internal:8080/check", {
--     method = "POST", body = payload, headers = { ["Content-Type"] = "application/json" },
--     query = { tenant = "a" }, keepalive_timeout = 60000, keepalive_pool = 10 })
--   if not res then return moongate.response.exit(502, { message = err }) end
--   -- res.status, res.reason, res.headers["content-type"] (any case), res.body
--
-- Response headers: one table per response, keys lower-cased, lookups in any case; a header
-- received more than once is an array of its values in arrival order.
-- Request bodies: a string or an array of strings (sent with Content-Length), or an iterator
-- function returning the next piece (nil: the end; nil, err: abort), sent chunked. A request
-- that sets Transfer-Encoding or Content-Length itself gets its body sent as is.
-- Response bodies: Content-Length, chunked (trailers read and dropped) and read-until-close
-- (the connection is then not reused); none for HEAD, 1xx, 204 and 304.
-- Keepalive: the connection goes back to the worker's pool (named scheme:host:port, plus the
-- server name and verification for https) unless the server said `Connection: close`, spoke
-- HTTP/1.0 without keep-alive, delimited the body by closing, or the body was not read to its
-- end; `set_keepalive()` then closes it instead and returns 2.
-- the cosocket implementation is looked up when a connection is made: the running gateway's
-- (moongate.socket, over FFI) or the in-process test kit's (moongate.spec.pdk)
local function tcp()
  local m = rawget(_G, "moongate")
  return (m and m.socket or require "moongate.pdk.socket").tcp()
end
local phases = require "moongate.phases"

local type, tostring, tonumber, error, setmetatable, getmetatable, rawget, rawset, pairs,
  ipairs = type, tostring, tonumber, error, setmetatable, getmetatable, rawget, rawset, pairs,
  ipairs
local byte, find, fmt, gsub, lower, match, sub = string.byte, string.find, string.format,
  string.gsub, string.lower, string.match, string.sub
local concat, sort = table.concat, table.sort
local min, floor = math.min, math.floor

local check, YIELDABLE = phases.check, phases.YIELDABLE

local _M = { _VERSION = "0.1.0", USER_AGENT = "moongate" }

local MAX_HEADERS = 200               -- header lines in one response head
local MAX_HEAD_BYTES = 65536          -- bytes in one response head
local MAX_INFORMATIONAL = 10          -- 1xx heads skipped before the final one
local MAX_TRAILERS = 100

-- body framings
local NONE, LENGTH, CHUNKED, CLOSE = 0, 1, 2, 3

local methods = {}
local mt = { __index = methods, __name = "moongate.http" }

--------------------------------------------------------------------------------------------
-- Headers: case-insensitive tables
--------------------------------------------------------------------------------------------

local headers_mt = {
  __index = function(t, k)
    if type(k) == "string" then
      local l = lower(k)
      if l ~= k then return rawget(t, l) end
    end
  end,
  __newindex = function(t, k, v)
    rawset(t, type(k) == "string" and lower(k) or k, v)
  end,
}

--- A table whose string keys are stored lower-cased and looked up in any case (what
-- `res.headers` is). @phases any
function _M.new_headers()
  return setmetatable({}, headers_mt)
end

--------------------------------------------------------------------------------------------
-- Objects and connections
--------------------------------------------------------------------------------------------

--- Creates a client (no connection yet; connect, request and request_uri run in the rewrite,
-- access and timer phases). @phases any
function _M.new()
  return setmetatable({ sock = false, ct = nil, st = nil, rt = nil, keepalive = false,
                        pending = false, gen = 0 }, mt)
end

local function check_self(self, fn)
  if type(self) ~= "table" or getmetatable(self) ~= mt then
    error("bad argument #1 to '" .. fn .. "' (an http client expected; call it as httpc:"
          .. fn .. "(...))", 3)
  end
end

local function ms_arg(v, fn, i)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
    error("bad argument #" .. i .. " to '" .. fn .. "' (timeout in ms must be a number >= 0)",
          3)
  end
  return v
end

--- Sets the connect, send and read timeouts (ms; nil or 0: the socket's default, 60 s). They
-- apply from the next connect, and at once to a connected client.
function methods.set_timeouts(self, connect_ms, send_ms, read_ms)
  check_self(self, "set_timeouts")
  self.ct = ms_arg(connect_ms, "set_timeouts", 1)
  self.st = ms_arg(send_ms, "set_timeouts", 2)
  self.rt = ms_arg(read_ms, "set_timeouts", 3)
  if self.sock then self.sock:settimeouts(self.ct, self.st, self.rt) end
end

--- Sets the three timeouts to one value (ms).
function methods.set_timeout(self, ms)
  check_self(self, "set_timeout")
  ms_arg(ms, "set_timeout", 1)
  self.ct, self.st, self.rt = ms, ms, ms
  if self.sock then self.sock:settimeouts(ms, ms, ms) end
end

local function drop(self)
  local sock = self.sock
  if sock then
    sock:close()
    self.sock = false
  end
  self.keepalive, self.pending = false, false
  self.gen = self.gen + 1
end

--- Connects, or takes an idle connection from the pool. opts: `host` (required), `scheme`
-- ("http" or "https", default "http"), `port` (default 80 / 443), `pool` (pool name),
-- `pool_size`, `ssl_server_name` (SNI and name to verify, default host), `ssl_verify`
-- (default true). A connection the client held is closed first.
-- @phases rewrite, access, timer, certificate
-- @return true, or nil and an error ("connection refused", "timeout", a TLS error...)
function methods.connect(self, opts)
  check_self(self, "connect")
  check(YIELDABLE, "httpc:connect")
  if type(opts) ~= "table" then
    error("bad argument #1 to 'connect' (an options table expected)", 2)
  end
  local host, scheme = opts.host, opts.scheme or "http"
  if type(host) ~= "string" or host == "" then
    error("bad argument #1 to 'connect' (opts.host must be a non-empty string)", 2)
  end
  if scheme ~= "http" and scheme ~= "https" then
    error("bad argument #1 to 'connect' (opts.scheme must be \"http\" or \"https\")", 2)
  end
  local https = scheme == "https"
  local port = opts.port or (https and 443 or 80)
  port = tonumber(port)
  if not port or port % 1 ~= 0 or port < 1 or port > 65535 then
    error("bad argument #1 to 'connect' (opts.port must be an integer in 1..65535)", 2)
  end
  local server_name = opts.ssl_server_name or host
  if type(server_name) ~= "string" then
    error("bad argument #1 to 'connect' (opts.ssl_server_name must be a string)", 2)
  end
  local verify = opts.ssl_verify ~= false
  local pool = opts.pool
  if pool == nil then
    pool = scheme .. ":" .. host .. ":" .. port
    if https then pool = pool .. ":" .. server_name .. (verify and ":verify" or ":noverify") end
  end

  drop(self)
  local sock = tcp()
  sock:settimeouts(self.ct, self.st, self.rt)
  local ok, err = sock:connect(host, port, { pool = pool, pool_size = opts.pool_size })
  if not ok then
    return nil, err
  end
  if https and sock:getreusedtimes() == 0 then
    ok, err = sock:sslhandshake(false, server_name, verify)
    if not ok then
      sock:close()
      return nil, err
    end
  end
  self.sock, self.host, self.port, self.scheme = sock, host, port, scheme
  self.keepalive = true
  return true
end

--- How many times the current connection came from the pool (0: a new one), or nil and
-- "not connected".
function methods.get_reused_times(self)
  check_self(self, "get_reused_times")
  if not self.sock then return nil, "not connected" end
  return self.sock:getreusedtimes()
end

--- Puts the connection in the pool (timeout ms idle, nil: 60 s; pool size) when it can be
-- reused, closes it otherwise. @return 1 (pooled), 2 (closed instead, as the server or an
-- unfinished body required), or nil and an error
function methods.set_keepalive(self, timeout, size)
  check_self(self, "set_keepalive")
  local sock = self.sock
  if not sock then return nil, "not connected" end
  if self.keepalive and not self.pending then
    self.sock = false
    self.keepalive = false
    self.gen = self.gen + 1
    local ok, err = sock:setkeepalive(timeout, size)
    if not ok then
      sock:close()
      return nil, err
    end
    return 1
  end
  drop(self)
  return 2
end

--- Closes the connection. @return 1, or nil and "not connected"
function methods.close(self)
  check_self(self, "close")
  if not self.sock then return nil, "not connected" end
  drop(self)
  return 1
end

--------------------------------------------------------------------------------------------
-- Requests
--------------------------------------------------------------------------------------------

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

local function escape(s)
  return (gsub(s, "[^%w%-._~]", function(c) return fmt("%%%02X", byte(c)) end))
end

local function query_value(v, key, lvl)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    return (v % 1 == 0 and v > -2^53 and v < 2^53) and fmt("%d", v) or tostring(v)
  end
  error("bad query argument " .. key .. " (string, number, boolean or array expected, got "
        .. t .. ")", lvl + 1)
end

-- A query table as a string: keys sorted, arrays repeated, true as a bare key, false left out.
local function encode_query(q, lvl)
  local keys = {}
  for k in pairs(q) do
    if type(k) ~= "string" and type(k) ~= "number" then
      error("bad query argument (keys must be strings)", lvl + 1)
    end
    keys[#keys + 1] = tostring(k)
  end
  sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if v == nil then v = q[tonumber(k)] end
    local ek = escape(k)
    if v == true then
      out[#out + 1] = ek
    elseif v ~= false then
      if type(v) == "table" then
        for _, one in ipairs(v) do
          if one == true then
            out[#out + 1] = ek
          elseif one ~= false then
            out[#out + 1] = ek .. "=" .. escape(query_value(one, k, lvl + 1))
          end
        end
      else
        out[#out + 1] = ek .. "=" .. escape(query_value(v, k, lvl + 1))
      end
    end
  end
  return concat(out, "&")
end

--- Encodes a query table (what `query = {...}` sends): keys sorted, values escaped, array
-- values repeated, `true` a bare key, `false` left out. @phases any
function _M.encode_args(q)
  if type(q) ~= "table" then error("bad argument #1 to 'encode_args' (table expected)", 2) end
  return encode_query(q, 2)
end

local function header_value(name, v, lvl)
  local t = type(v)
  if t == "number" then
    v = tostring(v)
  elseif t ~= "string" then
    error("header " .. name .. " must be a string, a number or an array of them, got " .. t,
          lvl + 1)
  end
  if find(v, "[%z\r\n]") then
    error("header " .. name .. " must not contain CR, LF or NUL", lvl + 1)
  end
  return v
end

-- Builds the request head: returns the array of pieces and what the body needs. Misuse
-- raises at level `lvl` (the user's code, counted from this function), helpers at lvl + 1.
local function build_head(self, params, close, lvl)
  local L = lvl
  if type(params) ~= "table" then
    error("bad argument #1 to 'request' (a params table expected)", L)
  end
  local method = params.method or "GET"
  if type(method) ~= "string" or not find(method, TOKEN) then
    error("bad request method: " .. tostring(method), L)
  end
  local path = params.path or "/"
  if type(path) ~= "string" or path == "" or find(path, "[%s%c]") then
    error("bad request path (a string without spaces or control characters expected)", L)
  end
  local query = params.query
  if query ~= nil then
    if type(query) == "table" then
      query = encode_query(query, L)
    elseif type(query) == "string" then
      query = gsub(query, "^%?", "")
      if find(query, "[%s%c#]") then
        error("bad query string (no spaces, control characters or '#')", L)
      end
    else
      error("bad query (a table or a string expected)", L)
    end
    if query ~= "" then
      path = path .. (find(path, "?", 1, true) and "&" or "?") .. query
    end
  end

  local head = { method, " ", path, " HTTP/1.1\r\n" }
  local seen = {}
  local headers = params.headers
  if headers ~= nil then
    if type(headers) ~= "table" then
      error("bad headers (a table expected)", L)
    end
    for name, v in pairs(headers) do
      if type(name) ~= "string" or not find(name, TOKEN) then
        error("bad header name: " .. tostring(name), L)
      end
      seen[lower(name)] = true
      if type(v) == "table" then
        for _, one in ipairs(v) do
          head[#head + 1] = name .. ": " .. header_value(name, one, L) .. "\r\n"
        end
      else
        head[#head + 1] = name .. ": " .. header_value(name, v, L) .. "\r\n"
      end
    end
  end
  if not seen.host then
    local host = self.host
    if find(host, ":", 1, true) then host = "[" .. host .. "]" end
    local default = self.scheme == "https" and 443 or 80
    head[#head + 1] = "Host: " .. host .. (self.port ~= default and ":" .. self.port or "")
                      .. "\r\n"
  end
  if not seen["user-agent"] then
    head[#head + 1] = "User-Agent: " .. _M.USER_AGENT .. "\r\n"
  end
  if close and not seen.connection then
    head[#head + 1] = "Connection: close\r\n"
  end

  local body = params.body
  local tb = type(body)
  local framed = seen["content-length"] or seen["transfer-encoding"]
  local chunked = false
  if tb == "string" then
    if not framed then head[#head + 1] = "Content-Length: " .. #body .. "\r\n" end
  elseif tb == "table" then
    local n = 0
    for i = 1, #body do
      if type(body[i]) ~= "string" then
        error("bad request body (an array of strings expected, item " .. i .. " is a "
              .. type(body[i]) .. ")", L)
      end
      n = n + #body[i]
    end
    if not framed then head[#head + 1] = "Content-Length: " .. n .. "\r\n" end
  elseif tb == "function" then
    if not framed then
      head[#head + 1] = "Transfer-Encoding: chunked\r\n"
      chunked = true
    end
  elseif body == nil then
    if not framed and (method == "POST" or method == "PUT" or method == "PATCH") then
      head[#head + 1] = "Content-Length: 0\r\n"
    end
  else
    error("bad request body (a string, an array of strings or a function expected, got "
          .. tb .. ")", L)
  end
  head[#head + 1] = "\r\n"
  return head, body, tb, chunked, method
end

-- Sends a body given as an iterator function.
local function send_iter(sock, body, chunked)
  while true do
    local piece, err = body()
    if piece == nil then
      if err ~= nil then return nil, "request body: " .. tostring(err) end
      break
    end
    if type(piece) ~= "string" then
      return nil, "request body: the iterator returned a " .. type(piece)
    end
    if piece ~= "" then
      local ok, serr = sock:send(chunked and { fmt("%x\r\n", #piece), piece, "\r\n" } or piece)
      if not ok then return nil, serr end
    end
  end
  if chunked then
    local ok, err = sock:send("0\r\n\r\n")
    if not ok then return nil, err end
  end
  return true
end

local function has_token(v, token)
  if type(v) == "table" then v = concat(v, ",") end
  if type(v) ~= "string" then return false end
  for t in v:gmatch("[^,%s]+") do
    if lower(t) == token then return true end
  end
  return false
end

-- Reads one response head: status line and header lines.
local function read_head(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local major, minor, status, reason = match(line, "^HTTP/(%d)%.(%d) (%d%d%d) ?(.*)$")
  if not major then
    return nil, "invalid status line: " .. sub(line, 1, 64)
  end
  local headers = setmetatable({}, headers_mt)
  local count, bytes = 0, #line
  while true do
    line, err = sock:receive("*l")
    if not line then return nil, err end
    if line == "" then break end
    count, bytes = count + 1, bytes + #line
    if count > MAX_HEADERS or bytes > MAX_HEAD_BYTES then
      return nil, "response head too large"
    end
    local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name or not find(name, TOKEN) then
      return nil, "invalid response header: " .. sub(line, 1, 64)
    end
    name = lower(name)
    local old = rawget(headers, name)
    if old == nil then
      rawset(headers, name, value)
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      rawset(headers, name, { old, value })
    end
  end
  return { status = tonumber(status), reason = reason, headers = headers,
           version = tonumber(major) + tonumber(minor) / 10 }
end

-- A body reader for the response just read (see res.body_reader).
local function make_reader(self, sock, kind, len)
  local gen = self.gen
  local left = len or 0        -- LENGTH: bytes left; CHUNKED: bytes left in this chunk
  local done = kind == NONE or (kind == LENGTH and left == 0)
  if done then self.pending = false end

  local function finish()
    done = true
    if self.gen == gen then self.pending = false end
    return nil
  end
  local function fail(err)
    done = true
    if self.gen == gen then drop(self) end
    return nil, err
  end

  return function(size)
    if size ~= nil and (type(size) ~= "number" or size < 1) then
      error("bad argument #1 to the body reader (chunk size must be a positive number)", 2)
    end
    if done then return nil end
    if self.gen ~= gen or self.sock ~= sock then
      done = true
      return nil, "closed"
    end
    size = size and floor(size)

    if kind == LENGTH then
      local n = size and min(size, left) or left
      local data, err = sock:receive(n)
      if not data then return fail(err) end
      left = left - n
      if left == 0 then
        done = true
        self.pending = false
      end
      return data

    elseif kind == CLOSE then
      local data, err
      if size then
        data, err = sock:receiveany(size)
      else
        data, err = sock:receive("*a")
      end
      if not data then
        if err == "closed" then return finish() end   -- the end of the body
        return fail(err)
      end
      if not size then finish() end                     -- "*a" read up to the close
      if data == "" then return nil end
      return data

    else -- CHUNKED
      if left == 0 then
        local line, err = sock:receive("*l")
        if not line then return fail(err) end
        local hex, rest = match(line, "^(%x+)(.*)$")
        if not hex or #hex > 12 or not (rest == "" or find(rest, "^[ \t]*;") or
                                        find(rest, "^[ \t]+$")) then
          return fail("invalid chunk size: " .. sub(line, 1, 32))
        end
        left = tonumber(hex, 16)
        if left == 0 then
          for _ = 1, MAX_TRAILERS do          -- trailers, dropped
            line, err = sock:receive("*l")
            if not line then return fail(err) end
            if line == "" then return finish() end
          end
          return fail("too many trailers")
        end
      end
      local n = size and min(size, left) or left
      local data, err = sock:receive(n)
      if not data then return fail(err) end
      left = left - n
      if left == 0 then
        local crlf
        crlf, err = sock:receive(2)
        if not crlf then return fail(err) end
        if crlf ~= "\r\n" then return fail("invalid chunk end") end
      end
      return data
    end
  end
end

--- Reads the rest of the body. @return the body ("" when there is none), or nil and an error
local function read_body(res)
  local reader = res.body_reader
  if not reader then return nil, "no body to be read" end
  local parts = {}
  while true do
    local data, err = reader()
    if data == nil then
      if err then return nil, err end
      break
    end
    parts[#parts + 1] = data
  end
  return concat(parts)
end

-- Sends a request on the current connection and reads the response head. `lvl`: the error
-- level of the user's code, counted from this function.
local function do_request(self, params, close, lvl)
  local head, body, tb, chunked, method = build_head(self, params, close, lvl + 1)
  local sock = self.sock
  if not sock then return nil, "not connected" end
  if self.pending then
    return nil, "the previous response body was not read to its end"
  end
  self.gen = self.gen + 1

  local ok, err
  if tb == "string" then
    head[#head + 1] = body
    ok, err = sock:send(head)
  elseif tb == "table" then
    head[#head + 1] = body
    ok, err = sock:send(head)
  else
    ok, err = sock:send(head)
    if ok and tb == "function" then ok, err = send_iter(sock, body, chunked) end
  end
  if not ok then
    drop(self)
    return nil, err
  end

  local res
  for _ = 1, MAX_INFORMATIONAL + 1 do
    res, err = read_head(sock)
    if not res then
      drop(self)
      return nil, err
    end
    if res.status >= 200 or res.status == 101 then break end
    res.status = nil
  end
  if not res.status then
    drop(self)
    return nil, "too many informational responses"
  end

  local status, h = res.status, res.headers
  local keepalive = self.keepalive and not has_token(h.connection, "close")
  if res.version < 1.1 and not has_token(h.connection, "keep-alive") then
    keepalive = false
  end
  local kind, len = CLOSE, nil
  if method == "HEAD" or status < 200 or status == 204 or status == 304 then
    kind = NONE
    if status == 101 then keepalive = false end
  elseif h["transfer-encoding"] then
    local te = h["transfer-encoding"]
    if type(te) == "table" then te = concat(te, ",") end
    if match(lower(te), "([^,%s]+)%s*$") == "chunked" then
      kind = CHUNKED
      if h["content-length"] then keepalive = false end
    end
  elseif h["content-length"] then
    local cl = h["content-length"]
    if type(cl) == "table" then
      for i = 2, #cl do
        if cl[i] ~= cl[1] then
          drop(self)
          return nil, "invalid response: conflicting Content-Length headers"
        end
      end
      cl = cl[1]
    end
    if not find(cl, "^%d+$") or #cl > 15 then
      drop(self)
      return nil, "invalid response: bad Content-Length " .. sub(cl, 1, 32)
    end
    kind, len = LENGTH, tonumber(cl)
  end
  if kind == CLOSE then keepalive = false end
  self.keepalive = keepalive
  self.pending = kind ~= NONE
  res.has_body = kind ~= NONE
  res.body_reader = make_reader(self, sock, kind, len)
  res.read_body = read_body
  return res
end

--- Sends a request on the connection and reads the response head. params: `method`
-- (default "GET"), `path` (default "/"), `query` (table or string), `headers` (name -> value
-- or array of values), `body` (string, array of strings, or iterator function: chunked).
-- Host and User-Agent ("moongate") are added unless given.
-- @phases rewrite, access, timer, certificate
-- @return res { status, reason, version, headers, has_body, body_reader(chunk_size),
-- read_body(res) }, or nil and an error
function methods.request(self, params)
  check_self(self, "request")
  check(YIELDABLE, "httpc:request")
  local res, err = do_request(self, params, false, 3)
  return res, err
end

local function parse_uri(uri)
  if type(uri) ~= "string" then return nil, "bad uri: a string expected" end
  local scheme, rest = match(uri, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "bad uri: " .. uri end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "bad uri: unsupported scheme " .. scheme
  end
  local authority, path = match(rest, "^([^/?#]*)(.*)$")
  if find(authority, "@", 1, true) then
    return nil, "bad uri: user information is not supported"
  end
  local host, port
  if sub(authority, 1, 1) == "[" then
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(authority, "^([^:]+):?(%d*)$")
  end
  if not host or host == "" then return nil, "bad uri: no host in " .. uri end
  port = port ~= "" and tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then return nil, "bad uri: bad port in " .. uri end
  path = gsub(path, "#.*$", "")
  local query
  local q = find(path, "?", 1, true)
  if q then
    path, query = sub(path, 1, q - 1), sub(path, q + 1)
  end
  if path == "" then path = "/" end
  return scheme, host, port, path, query
end

--- Parses an http(s) URI. @return scheme, host, port, path, query (or nil), or nil and an
-- error. @phases any
function _M.parse_uri(uri)
  return parse_uri(uri)
end

local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true }

--- One request in one call: connect (or reuse a pooled connection), send, read the whole
-- body, then pool the connection (or close it with `keepalive = false`). params: `method`,
-- `headers`, `body`, `query` (table or string; added to the URI's own), `keepalive` (default
-- true), `keepalive_timeout` (ms idle), `keepalive_pool` (pool size), `pool` (pool name),
-- `ssl_verify` (default true), `ssl_server_name`. An idempotent request on a pooled
-- connection the server had closed meanwhile is sent again once on a new connection.
-- @phases rewrite, access, timer, certificate
-- @return res { status, reason, version, headers, body }, or nil and an error
function methods.request_uri(self, uri, params)
  check_self(self, "request_uri")
  check(YIELDABLE, "httpc:request_uri")
  if params ~= nil and type(params) ~= "table" then
    error("bad argument #2 to 'request_uri' (a params table expected)", 2)
  end
  params = params or {}
  local scheme, host, port, path, query = parse_uri(uri)
  if not scheme then return nil, host end
  local q = params.query
  if q ~= nil then
    if type(q) == "table" then q = encode_query(q, 2) end
    if type(q) ~= "string" then
      error("bad query (a table or a string expected)", 2)
    end
    q = gsub(q, "^%?", "")
    query = (query and query ~= "" and q ~= "") and (query .. "&" .. q) or
            (q ~= "" and q or query)
  end
  local close = params.keepalive == false
  local req = { method = params.method, path = path, query = query, headers = params.headers,
                body = params.body }
  local copts = { scheme = scheme, host = host, port = port, pool = params.pool,
                  pool_size = params.keepalive_pool, ssl_server_name = params.ssl_server_name,
                  ssl_verify = params.ssl_verify }

  local res, err
  for attempt = 1, 2 do
    local ok
    ok, err = self:connect(copts)
    if not ok then return nil, err end
    local reused = self.sock:getreusedtimes()
    res, err = do_request(self, req, close, 3)
    if res then break end
    if not (attempt == 1 and reused > 0 and err == "closed" and type(req.body) ~= "function"
            and IDEMPOTENT[req.method or "GET"]) then
      return nil, err
    end
  end

  local body
  body, err = read_body(res)
  if not body then
    drop(self)
    return nil, err
  end
  if close then
    drop(self)
  else
    -- a connection that cannot be pooled is closed: nothing to report to the caller
    self:set_keepalive(params.keepalive_timeout, params.keepalive_pool)
  end
  res.body, res.body_reader, res.read_body, res.has_body = body, nil, nil, nil
  return res
end

return _M
