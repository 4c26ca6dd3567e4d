--- moongate.spec.upstream: a real HTTP/1.1 upstream for specs.
--
-- One process, one thread: every connection is a coroutine, scheduled by `socket.select()` on
-- non-blocking luasocket sockets, so slow or hanging clients never hold up the others. It
-- reads requests with Content-Length or chunked bodies as a stream (a 1 GiB body is counted,
-- never held: only bodies up to 1 MiB are kept), answers pipelined requests in order, and
-- keeps the connection alive as HTTP/1.1 says.
--
-- Standalone:   luajit lua/moongate/spec/upstream.lua --port 9001 [--host 127.0.0.1] [--mode M]
-- prints "listening on PORT" once it accepts (`--port 0` picks a free port) and runs until
-- killed. As a module it exports `new()`, `sha1()`, `websocket_accept()` and the frame codec.
--
-- Default answer: 200 application/json echoing what was received:
--   { method, path (full request target, query included), uri_args (only with a query),
--     http_version ("1.1"), headers (lower-cased name -> value, or a list when repeated),
--     body (string if <= 1 MiB, else null), body_length, received_framing ("chunked",
--     "content-length" or "none"), trailers (only if any), connection_id (one per TCP
--     connection, counted from 1), request_on_connection (1, 2, ... on that connection) }
--
-- MODES are selected by the request header `X-Upstream-Mode` only (the path is left alone,
-- so any route can reach any mode). The value is a comma-separated list, e.g.
-- `X-Upstream-Mode: delay:200, status:503`. `--mode` (or `PUT /_upstream/mode`) sets a
-- default for requests without the header (health checks, say); a request's header replaces
-- the default wholly. An unknown mode is answered 400.
--   status:N            answer with status N (the usual JSON echo as body, none for 1xx/204/304)
--   delay:MS            wait MS milliseconds before answering (other clients are served)
--   hang                read the request, then never answer (the connection stays open)
--   reset               read the request, then close with an RST (SO_LINGER 0)
--   close-before-headers read the request, then close (FIN) without a byte of answer
--   garbage             answer "this is not http\r\n\r\n" and close
--   die-mid-body        headers with Content-Length: 100000, then 10 bytes, then close
--   chunked-response    the JSON echo, sent with Transfer-Encoding: chunked in several chunks
--   big:N               an N-byte body (N may be several GiB) with Content-Length, generated
--                       on the fly: byte k of the body is PATTERN:byte(k % 64 + 1)
--   big-chunked:N       the same body, chunked (64 KiB chunks)
--   websocket           RFC 6455 handshake, then echo every frame (also done without the mode
--                       whenever the request has `Upgrade: websocket`)
--   headers             no-op alias: `X-Upstream-Headers: a: 1; b: 2` always adds response
--                       headers `a: 1` and `b: 2`, whatever the mode
-- `Expect: 100-continue` on a request with a body is answered "HTTP/1.1 100 Continue" before
-- the body is read.
--
-- CONTROL endpoints (never recorded, never counted; the query string is ignored):
--   GET /_upstream/requests    JSON array of the last 100 requests, oldest first (the echo
--                              objects, plus `time`; an aborted one has `error`)
--   DELETE /_upstream/requests forget them and reset the count (204)
--   GET /_upstream/count       {"count": N}, N = requests received since start (or reset)
--   GET /_upstream/mode        {"mode": "..."} (null when none)
--   PUT /_upstream/mode        the body becomes the default mode (empty body clears it)

-- run standalone (`luajit lua/moongate/spec/upstream.lua`), find the rest of lua/ from here
do
  local dir = (debug.getinfo(1, "S").source:match("^@(.*)/moongate/spec/[^/]*$"))
  if dir then package.path = dir .. "/?.lua;" .. package.path end
end
local socket = require "socket"
local sha1 = require "moongate.sha1"
local cjson = require "cjson.safe"
local bit = require "bit"

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local lshift, rshift, rol, tobit, tohex = bit.lshift, bit.rshift, bit.rol, bit.tobit, bit.tohex
local byte, char, sub, find, fmt, rep, lower, gsub, match =
  string.byte, string.char, string.sub, string.find, string.format, string.rep, string.lower,
  string.gsub, string.match
local concat, remove = table.concat, table.remove
local floor, min, max = math.floor, math.min, math.max
local unpack = unpack or table.unpack
local gettime = socket.gettime
local co_create, co_resume, co_status, co_yield =
  coroutine.create, coroutine.resume, coroutine.status, coroutine.yield

local _M = {}

_M.PATTERN = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_M.MAX_KEPT_BODY = 1024 * 1024
_M.MAX_RECORDS = 100

local READ_SIZE = 65536
local BLOCK = rep(_M.PATTERN, 65536 / 64)          -- 64 KiB, a whole number of patterns
local MAX_LINE = 64 * 1024
local MAX_HEADERS = 200
local MAX_FRAME = 16 * 1024 * 1024
-- select() works on fds below FD_SETSIZE (1024): stop accepting before that.
local MAX_CONNS = 900
local WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols", [200] = "OK", [201] = "Created",
  [202] = "Accepted", [204] = "No Content", [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [413] = "Content Too Large",
  [418] = "I'm a teapot", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

--------------------------------------------------------------------------------------------
-- SHA-1, base64, WebSocket
--------------------------------------------------------------------------------------------

--- SHA-1 digest (moongate.sha1).
-- @tparam string msg message
-- @treturn string the 20-byte binary digest
function _M.sha1(msg)
  return sha1.binary(msg)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

--- Standard base64 (RFC 4648, with padding).
-- @tparam string s bytes
-- @treturn string
function _M.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1, c2 = floor(n / 262144) % 64, floor(n / 4096) % 64
    local c3, c4 = floor(n / 64) % 64, n % 64
    out[#out + 1] = sub(B64, c1 + 1, c1 + 1) .. sub(B64, c2 + 1, c2 + 1)
      .. (b and sub(B64, c3 + 1, c3 + 1) or "=") .. (c and sub(B64, c4 + 1, c4 + 1) or "=")
  end
  return concat(out)
end

--- The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 §4.2.2).
-- @tparam string key the client's key
-- @treturn string
function _M.websocket_accept(key)
  return _M.base64(_M.sha1(key .. WEBSOCKET_GUID))
end

local function xor_mask(payload, key)
  local k = { byte(key, 1, 4) }
  local out = {}
  for i = 1, #payload, 4096 do
    local part = { byte(payload, i, min(i + 4095, #payload)) }
    for j = 1, #part do
      part[j] = bxor(part[j], k[(i + j - 2) % 4 + 1])
    end
    out[#out + 1] = char(unpack(part))
  end
  return concat(out)
end

--- Encodes one WebSocket frame.
-- @tparam number opcode 1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation
-- @tparam string payload
-- @param[opt] mask nil/false: unmasked (server frames); true: a random key; a 4-byte string:
-- that key (client frames must be masked)
-- @tparam[opt=true] boolean fin
-- @treturn string the frame bytes
function _M.encode_frame(opcode, payload, mask, fin)
  payload = payload or ""
  local len = #payload
  local head = char(bor(fin == false and 0 or 0x80, opcode))
  local mbit = mask and 0x80 or 0
  if len < 126 then
    head = head .. char(bor(mbit, len))
  elseif len < 65536 then
    head = head .. char(bor(mbit, 126), floor(len / 256), len % 256)
  else
    local b = {}
    for i = 8, 1, -1 do
      b[i] = len % 256
      len = floor(len / 256)
    end
    head = head .. char(bor(mbit, 127)) .. char(unpack(b))
  end
  if not mask then
    return head .. payload
  end
  if mask == true then
    mask = char(math.random(0, 255), math.random(0, 255), math.random(0, 255),
                math.random(0, 255))
  end
  return head .. mask .. xor_mask(payload, mask)
end

--- Decodes one WebSocket frame from a buffer.
-- @tparam string buf bytes received so far
-- @tparam[opt=1] number pos where the frame starts
-- @return `{ fin, opcode, masked, payload }` (payload unmasked) and the position after the
-- frame; or nil when the buffer holds only part of a frame; or nil and an error message
function _M.decode_frame(buf, pos)
  pos = pos or 1
  local avail = #buf - pos + 1
  if avail < 2 then
    return nil
  end
  local b1, b2 = byte(buf, pos, pos + 1)
  local len, p = band(b2, 0x7f), pos + 2
  if len == 126 then
    if avail < 4 then return nil end
    local x, y = byte(buf, p, p + 1)
    len, p = x * 256 + y, p + 2
  elseif len == 127 then
    if avail < 10 then return nil end
    len = 0
    for i = 0, 7 do
      len = len * 256 + byte(buf, p + i)
    end
    p = p + 8
  end
  if len > MAX_FRAME then
    return nil, "frame too large: " .. len
  end
  local masked = band(b2, 0x80) ~= 0
  local key
  if masked then
    if #buf < p + 3 then return nil end
    key, p = sub(buf, p, p + 3), p + 4
  end
  if #buf < p + len - 1 then
    return nil
  end
  local payload = sub(buf, p, p + len - 1)
  if masked then
    payload = xor_mask(payload, key)
  end
  return { fin = band(b1, 0x80) ~= 0, opcode = band(b1, 0x0f), masked = masked,
           payload = payload }, p + len
end

--------------------------------------------------------------------------------------------
-- Helpers
--------------------------------------------------------------------------------------------

local function trim(s)
  return (match(s, "^[ \t]*(.-)[ \t]*$"))
end

local function json(v)
  -- cjson escapes "/" as "\/"; both decode alike, but a plain "/" keeps bodies greppable.
  return (gsub(assert(cjson.encode(v)), "\\/", "/"))
end

local function url_decode(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function parse_query(q)
  local args = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = match(pair, "^([^=]*)=(.*)$")
    if k then
      k, v = url_decode(k), url_decode(v)
    else
      k, v = url_decode(pair), true
    end
    local old = args[k]
    if old == nil then
      args[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      args[k] = { old, v }
    end
  end
  return args
end

-- Header values as a list, whether the header appeared once or more.
local function values(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

local function has_token(v, token)
  for _, s in ipairs(values(v)) do
    for t in lower(s):gmatch("[^,%s]+") do
      if t == token then return true end
    end
  end
  return false
end

--- Parses a mode list like "delay:100, status:503".
-- @tparam string|table s the header value(s)
-- @treturn table list of `{ name = "delay", arg = "100" }`
function _M.parse_modes(s)
  local modes = {}
  for _, v in ipairs(values(s)) do
    for item in v:gmatch("[^,]+") do
      item = trim(item)
      if item ~= "" then
        local name, arg = match(item, "^([^:]+):(.*)$")
        modes[#modes + 1] = { name = trim(name or item), arg = arg and trim(arg) }
      end
    end
  end
  return modes
end

--------------------------------------------------------------------------------------------
-- Connection: a buffered non-blocking socket owned by one coroutine
--------------------------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

local function new_conn(sock, id)
  return setmetatable({ sock = sock, id = id, buf = "", pos = 1, wait = nil,
                        requests = 0 }, Conn)
end

function Conn:wait_read()
  self.wait = "r"
  co_yield()
end

function Conn:wait_write()
  self.wait = "w"
  co_yield()
end

function Conn:sleep(seconds)
  self.wait, self.wake_at = "sleep", gettime() + seconds
  co_yield()
end

-- Appends what the socket has to the buffer, waiting for at least one byte.
function Conn:fill()
  while true do
    local data, err, partial = self.sock:receive(READ_SIZE)
    local got = data or partial
    if got and #got > 0 then
      if self.pos > #self.buf then
        self.buf = got
      else
        self.buf = sub(self.buf, self.pos) .. got
      end
      self.pos = 1
      return true
    end
    if err ~= "timeout" then
      return nil, err
    end
    self:wait_read()
  end
end

-- A line without its CRLF (a bare LF is accepted too).
function Conn:read_line()
  while true do
    local e = find(self.buf, "\n", self.pos, true)
    if e then
      local line = sub(self.buf, self.pos, e - 1)
      self.pos = e + 1
      if byte(line, -1) == 13 then
        line = sub(line, 1, -2)
      end
      return line
    end
    if #self.buf - self.pos + 1 > MAX_LINE then
      return nil, "line too long"
    end
    local ok, err = self:fill()
    if not ok then
      return nil, err
    end
  end
end

-- Up to n bytes: what is buffered, or what the next read brings.
function Conn:read_some(n)
  if self.pos > #self.buf then
    local ok, err = self:fill()
    if not ok then
      return nil, err
    end
  end
  local avail = #self.buf - self.pos + 1
  if self.pos == 1 and avail <= n then
    local s = self.buf
    self.buf = ""
    return s
  end
  n = min(n, avail)
  local s = sub(self.buf, self.pos, self.pos + n - 1)
  self.pos = self.pos + n
  return s
end

function Conn:send(data)
  local i, n = 1, #data
  while i <= n do
    local last, err, partial = self.sock:send(data, i)
    if last then
      return true
    end
    if err ~= "timeout" then
      return nil, err
    end
    i = partial + 1
    if i <= n then
      self:wait_write()
    end
  end
  return true
end

-- Waits until the peer goes away, discarding whatever it sends.
function Conn:drain_forever()
  while true do
    self.pos = #self.buf + 1
    if not self:fill() then
      return
    end
  end
end

--------------------------------------------------------------------------------------------
-- Requests
--------------------------------------------------------------------------------------------

-- Reads a request head. Returns the request; or nil (peer gone) ; or nil, err, status.
local function read_head(conn)
  local line, err
  repeat                                   -- RFC 9112 §2.2: ignore leading empty lines
    line, err = conn:read_line()
    if not line then
      return nil, err, err == "line too long" and 414 or nil
    end
  until line ~= ""
  local method, target, version = match(line, "^(%S+) (%S+) HTTP/(%d%.%d)$")
  if not method then
    return nil, "bad request line: " .. line, 400
  end
  local headers, count = {}, 0
  while true do
    line, err = conn:read_line()
    if not line then
      return nil, err, err == "line too long" and 431 or nil
    end
    if line == "" then
      break
    end
    count = count + 1
    if count > MAX_HEADERS then
      return nil, "too many headers", 431
    end
    local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name then
      return nil, "bad header line: " .. line, 400
    end
    name = lower(name)
    local old = headers[name]
    if old == nil then
      headers[name] = value
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      headers[name] = { old, value }
    end
  end
  local path_only, query = match(target, "^([^?]*)%?(.*)$")
  return { method = method, target = target, path = path_only or target, query = query,
           version = version, headers = headers }
end

-- The framing of a request body: "chunked", "content-length" (+ length) or "none".
local function framing(req)
  local te = req.headers["transfer-encoding"]
  if te then
    if has_token(te, "chunked") then
      return "chunked"
    end
    return nil, "unsupported transfer-encoding"
  end
  local cl = req.headers["content-length"]
  if cl then
    local list, n = values(cl), nil
    for _, v in ipairs(list) do
      local x = match(v, "^%d+$") and tonumber(v)
      if not x or (n and x ~= n) then
        return nil, "bad content-length"
      end
      n = x
    end
    return "content-length", n
  end
  return "none", 0
end

-- A body sink: keeps bodies up to MAX_KEPT_BODY, counts every byte.
local function new_sink()
  local sink = { parts = {}, length = 0 }
  function sink.add(s)
    sink.length = sink.length + #s
    if sink.parts then
      if sink.length > _M.MAX_KEPT_BODY then
        sink.parts = nil
      else
        sink.parts[#sink.parts + 1] = s
      end
    end
  end
  return sink
end

local function read_exact(conn, n, sink)
  while n > 0 do
    local s, err = conn:read_some(min(n, READ_SIZE))
    if not s then
      return nil, err
    end
    sink.add(s)
    n = n - #s
  end
  return true
end

local function read_chunked(conn, sink)
  while true do
    local line, err = conn:read_line()
    if not line then
      return nil, err
    end
    local hex = match(line, "^%s*(%x+)")
    if not hex then
      return nil, "bad chunk size: " .. line
    end
    local size = tonumber(hex, 16)
    if size == 0 then
      local trailers = {}
      while true do
        line, err = conn:read_line()
        if not line then
          return nil, err
        end
        if line == "" then
          return true, next(trailers) and trailers or nil
        end
        local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if name then
          trailers[lower(name)] = value
        end
      end
    end
    local ok
    ok, err = read_exact(conn, size, sink)
    if not ok then
      return nil, err
    end
    line, err = conn:read_line()
    if line ~= "" then
      return nil, err or "chunk not followed by CRLF"
    end
  end
end

--------------------------------------------------------------------------------------------
-- Responses
--------------------------------------------------------------------------------------------

local function head_bytes(status, headers)
  local out = { fmt("HTTP/1.1 %d %s\r\n", status, REASONS[status] or "Status") }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  return concat(out)
end

local function bodiless(status, method)
  return method == "HEAD" or status < 200 or status == 204 or status == 304
end

-- Extra response headers from `X-Upstream-Headers: a: 1; b: 2`.
local function extra_headers(req, list)
  for _, v in ipairs(values(req.headers["x-upstream-headers"])) do
    for item in v:gmatch("[^;]+") do
      local name, value = match(item, "^%s*([^:]-)%s*:%s*(.-)%s*$")
      if name and name ~= "" then
        list[#list + 1] = { name, value }
      end
    end
  end
  return list
end

--------------------------------------------------------------------------------------------
-- Server
--------------------------------------------------------------------------------------------

local Server = {}
Server.__index = Server

--- Creates a server bound and listening, not yet running.
-- @tparam[opt] table opts `host` (default "127.0.0.1"), `port` (default 0: a free one),
-- `mode` (default mode string for requests without X-Upstream-Mode)
-- @return the server (`.port` is the bound port), or nil and an error message
function _M.new(opts)
  opts = opts or {}
  local host, port = opts.host or "127.0.0.1", opts.port or 0
  local sock = host:find(":", 1, true) and socket.tcp6() or socket.tcp4() -- "::1": IPv6
  if not sock then
    return nil, "could not create a socket"
  end
  sock:setoption("reuseaddr", true)
  local ok, err = sock:bind(host, port)
  if not ok then
    sock:close()
    return nil, fmt("could not bind %s:%s: %s", host, port, err)
  end
  ok, err = sock:listen(1024)
  if not ok then
    sock:close()
    return nil, "could not listen: " .. err
  end
  sock:settimeout(0)
  local _, bound = sock:getsockname()
  return setmetatable({
    sock = sock, host = host, port = tonumber(bound), mode = opts.mode,
    records = {}, count = 0, conn_seq = 0, nconns = 0,
    conns = {},          -- coroutine -> conn, for every live connection
    want_read = {},      -- socket -> conn
    want_write = {},     -- socket -> conn
    sleeping = {},       -- conn -> wake-up time
  }, Server)
end

function Server:record(rec)
  self.count = self.count + 1
  local records = self.records
  records[#records + 1] = rec
  if #records > _M.MAX_RECORDS then
    remove(records, 1)
  end
end

function Server:close_conn(conn, reset)
  if conn.closed then
    return
  end
  conn.closed = true
  self.want_read[conn.sock] = nil
  self.want_write[conn.sock] = nil
  self.sleeping[conn] = nil
  self.conns[conn.co] = nil
  self.nconns = self.nconns - 1
  if reset then
    conn.sock:setoption("linger", { on = true, timeout = 0 })
  end
  conn.sock:close()
end

-- Answers a /_upstream/* control request; returns false to close the connection.
function Server:control(conn, req, keep)
  local status, body = 200, nil
  local path = req.path
  if path == "/_upstream/requests" and req.method == "GET" then
    local items = {}
    for i, rec in ipairs(self.records) do
      items[i] = json(rec)
    end
    body = "[" .. concat(items, ",") .. "]"
  elseif path == "/_upstream/requests" and req.method == "DELETE" then
    self.records, self.count, status = {}, 0, 204
  elseif path == "/_upstream/count" and req.method == "GET" then
    body = json({ count = self.count })
  elseif path == "/_upstream/mode" and req.method == "GET" then
    body = json({ mode = self.mode or cjson.null })
  elseif path == "/_upstream/mode" and req.method == "PUT" then
    local mode = trim(req.body or "")
    self.mode, status = mode ~= "" and mode or nil, 204
  else
    status, body = 404, json({ message = "no such control endpoint" })
  end
  local headers = { { "Content-Type", "application/json" } }
  if status ~= 204 then
    headers[#headers + 1] = { "Content-Length", tostring(#body) }
  end
  if not keep then
    headers[#headers + 1] = { "Connection", "close" }
  end
  conn:send(head_bytes(status, headers) .. (req.method ~= "HEAD" and body or ""))
  return keep
end

local function send_big(conn, n, chunked)
  local sent = 0
  while sent < n do
    local len = min(#BLOCK, n - sent)
    local piece = len == #BLOCK and BLOCK or sub(BLOCK, 1, len)
    if chunked then
      piece = fmt("%x\r\n", len) .. piece .. "\r\n"
    end
    if not conn:send(piece) then
      return nil
    end
    sent = sent + len
  end
  if chunked then
    return conn:send("0\r\n\r\n")
  end
  return true
end

function Server:websocket(conn, req)
  local key = req.headers["sec-websocket-key"]
  if type(key) ~= "string" or not has_token(req.headers.connection, "upgrade") then
    conn:send(head_bytes(400, { { "Content-Length", "0" }, { "Connection", "close" } }))
    return
  end
  local headers = {
    { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
    { "Sec-WebSocket-Accept", _M.websocket_accept(key) },
  }
  local proto = req.headers["sec-websocket-protocol"]
  if type(proto) == "string" then
    headers[#headers + 1] = { "Sec-WebSocket-Protocol", match(proto, "^%s*([^,%s]+)") }
  end
  if not conn:send(head_bytes(101, extra_headers(req, headers))) then
    return
  end
  while true do
    local frame, pos_or_err = _M.decode_frame(conn.buf, conn.pos)
    if frame then
      conn.pos = pos_or_err
      local op = frame.opcode
      if op == 8 then                                   -- close: echo it, then hang up
        conn:send(_M.encode_frame(8, frame.payload))
        return
      elseif op == 9 then
        conn:send(_M.encode_frame(10, frame.payload))
      elseif op ~= 10 then
        conn:send(_M.encode_frame(op, frame.payload, nil, frame.fin))
      end
    elseif pos_or_err then
      conn:send(_M.encode_frame(8, "\3\234" .. pos_or_err))   -- 1002 protocol error
      return
    elseif not conn:fill() then
      return
    end
  end
end

-- Reads one request and answers it. Returns true to keep the connection for the next one,
-- or false and whether to close with an RST.
function Server:serve(conn)
  local req, err, status = read_head(conn)
  if not req then
    if status then
      local body = json({ message = err })
      conn:send(head_bytes(status, { { "Content-Type", "application/json" },
        { "Content-Length", tostring(#body) }, { "Connection", "close" } }) .. body)
    end
    return false
  end
  conn.requests = conn.requests + 1
  local h = req.headers
  local keep
  if req.version == "1.0" then
    keep = has_token(h.connection, "keep-alive")
  else
    keep = not has_token(h.connection, "close")
  end

  local kind, length = framing(req)
  if not kind then
    local body = json({ message = length })
    conn:send(head_bytes(400, { { "Content-Type", "application/json" },
      { "Content-Length", tostring(#body) }, { "Connection", "close" } }) .. body)
    return false
  end

  if kind ~= "none" and req.version == "1.1" and has_token(h.expect, "100-continue") then
    if not conn:send("HTTP/1.1 100 Continue\r\n\r\n") then
      return false
    end
  end

  local sink, ok, trailers = new_sink(), true, nil
  if kind == "content-length" then
    ok, err = read_exact(conn, length, sink)
  elseif kind == "chunked" then
    ok, trailers = read_chunked(conn, sink)
    if not ok then
      err = trailers
      trailers = nil
    end
  end
  local body = sink.parts and concat(sink.parts) or nil

  if sub(req.path, 1, 11) == "/_upstream/" then
    if not ok then
      return false
    end
    req.body = body
    return self:control(conn, req, keep)
  end

  local echo = {
    method = req.method, path = req.target,
    uri_args = req.query and parse_query(req.query) or nil,
    http_version = req.version, headers = h,
    body = body or cjson.null, body_length = sink.length, received_framing = kind,
    trailers = trailers, connection_id = conn.id, request_on_connection = conn.requests,
  }
  local rec = { time = gettime(), error = not ok and (err or "aborted") or nil }
  for k, v in pairs(echo) do
    rec[k] = v
  end
  self:record(rec)
  if not ok then
    return false
  end

  local modes = _M.parse_modes(h["x-upstream-mode"] or self.mode)
  local answer, arg = "echo", nil
  status = 200
  for _, m in ipairs(modes) do
    local name = m.name
    if name == "status" then
      status = tonumber(m.arg)
      if not status or status < 100 or status > 999 then
        answer, arg = "bad-mode", "status needs a number: " .. tostring(m.arg)
        break
      end
    elseif name == "delay" then
      local ms = tonumber(m.arg)
      if not ms then
        answer, arg = "bad-mode", "delay needs milliseconds: " .. tostring(m.arg)
        break
      end
      conn:sleep(ms / 1000)
    elseif name == "big" or name == "big-chunked" then
      arg = tonumber(m.arg)
      if not arg or arg < 0 then
        answer, arg = "bad-mode", name .. " needs a byte count: " .. tostring(m.arg)
        break
      end
      answer = name
    elseif name == "hang" or name == "reset" or name == "close-before-headers"
        or name == "garbage" or name == "die-mid-body" or name == "chunked-response"
        or name == "websocket" then
      answer = name
    elseif name ~= "headers" then
      answer, arg = "bad-mode", "unknown upstream mode: " .. name
      break
    end
  end
  if answer == "echo" and has_token(h.upgrade, "websocket") then
    answer = "websocket"
  end

  if answer == "hang" then
    conn:drain_forever()
    return false
  elseif answer == "reset" then
    return false, true
  elseif answer == "close-before-headers" then
    return false
  elseif answer == "garbage" then
    conn:send("this is not http\r\n\r\n")
    return false
  elseif answer == "die-mid-body" then
    conn:send(head_bytes(200, { { "Content-Type", "application/octet-stream" },
      { "Content-Length", "100000" } }) .. sub(BLOCK, 1, 10))
    return false
  elseif answer == "websocket" then
    self:websocket(conn, req)
    return false
  elseif answer == "bad-mode" then
    status = 400
  end

  local headers = {}
  local payload
  if answer == "big" or answer == "big-chunked" then
    headers[1] = { "Content-Type", "application/octet-stream" }
  else
    headers[1] = { "Content-Type", "application/json" }
    payload = answer == "bad-mode" and json({ message = arg }) or json(echo)
  end
  local no_body = bodiless(status, req.method)
  local chunked = answer == "big-chunked" or answer == "chunked-response"
  if chunked then
    if status >= 200 and status ~= 204 and status ~= 304 then
      headers[#headers + 1] = { "Transfer-Encoding", "chunked" }
    end
  elseif status >= 200 and status ~= 204 and status ~= 304 then
    local n = payload and #payload or arg
    headers[#headers + 1] = { "Content-Length", fmt("%.0f", n) }
  end
  if not keep then
    headers[#headers + 1] = { "Connection", "close" }
  elseif req.version == "1.0" then
    headers[#headers + 1] = { "Connection", "keep-alive" }
  end
  extra_headers(req, headers)

  local head = head_bytes(status, headers)
  if no_body then
    ok = conn:send(head)
  elseif answer == "big" or answer == "big-chunked" then
    ok = conn:send(head) and send_big(conn, arg, chunked)
  elseif answer == "chunked-response" then
    local parts, step = { head }, max(1, floor(#payload / 4))
    for i = 1, #payload, step do
      local piece = sub(payload, i, i + step - 1)
      parts[#parts + 1] = fmt("%x\r\n", #piece) .. piece .. "\r\n"
    end
    parts[#parts + 1] = "0\r\n\r\n"
    -- Separate writes, so a reader sees the chunks arrive in several reads.
    ok = true
    for _, p in ipairs(parts) do
      ok = ok and conn:send(p)
    end
  else
    ok = conn:send(head .. payload)
  end
  return ok and keep or false
end

function Server:handle(conn)
  while true do
    local keep, reset = self:serve(conn)
    if not keep then
      return reset
    end
  end
end

function Server:resume(conn)
  conn.wait = nil
  local ok, res = co_resume(conn.co)
  if not ok then
    io.stderr:write("upstream: connection ", conn.id, " failed: ", tostring(res), "\n")
    self:close_conn(conn)
  elseif co_status(conn.co) == "dead" then
    self:close_conn(conn, res)
  elseif conn.wait == "r" then
    self.want_read[conn.sock] = conn
  elseif conn.wait == "w" then
    self.want_write[conn.sock] = conn
  elseif conn.wait == "sleep" then
    self.sleeping[conn] = conn.wake_at
  end
end

function Server:accept()
  while self.nconns < MAX_CONNS do
    local sock = self.sock:accept()
    if not sock then
      return
    end
    sock:settimeout(0)
    sock:setoption("tcp-nodelay", true)
    self.conn_seq = self.conn_seq + 1
    local conn = new_conn(sock, self.conn_seq)
    conn.co = co_create(function() return self:handle(conn) end)
    self.conns[conn.co] = conn
    self.nconns = self.nconns + 1
    self:resume(conn)
  end
end

--- Runs the event loop once: wakes due sleepers, waits for I/O up to `max_wait` seconds.
-- @tparam[opt=1] number max_wait
function Server:step(max_wait)
  local now, timeout = gettime(), max_wait or 1
  local due = {}
  for conn, at in pairs(self.sleeping) do
    if at <= now then
      due[#due + 1] = conn
    else
      timeout = min(timeout, at - now)
    end
  end
  for _, conn in ipairs(due) do
    self.sleeping[conn] = nil
    self:resume(conn)
  end
  if #due > 0 then
    timeout = 0
  end
  local r, w = {}, {}
  if self.nconns < MAX_CONNS then
    r[1] = self.sock
  end
  for s in pairs(self.want_read) do
    r[#r + 1] = s
  end
  for s in pairs(self.want_write) do
    w[#w + 1] = s
  end
  local readable, writable = socket.select(r, w, max(0, timeout))
  for _, s in ipairs(readable or {}) do
    if s == self.sock then
      self:accept()
    else
      local conn = self.want_read[s]
      if conn then
        self.want_read[s] = nil
        self:resume(conn)
      end
    end
  end
  for _, s in ipairs(writable or {}) do
    local conn = self.want_write[s]
    if conn then
      self.want_write[s] = nil
      self:resume(conn)
    end
  end
end

--- Serves forever.
function Server:run()
  while true do
    self:step(1)
  end
end

--------------------------------------------------------------------------------------------
-- Command line
--------------------------------------------------------------------------------------------

local function main(argv)
  local opts, i = {}, 1
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    if a == "--port" then
      opts.port = tonumber(v)
    elseif a == "--host" then
      opts.host = v
    elseif a == "--mode" then
      opts.mode = v
    else
      io.stderr:write("usage: upstream.lua --port N [--host ADDR] [--mode MODES]\n")
      os.exit(2)
    end
    i = i + 2
  end
  if not opts.port then
    io.stderr:write("upstream: --port is required (0 picks a free one)\n")
    os.exit(2)
  end
  local srv, err = _M.new(opts)
  if not srv then
    io.stderr:write("upstream: ", err, "\n")
    os.exit(1)
  end
  io.stdout:write("listening on ", srv.port, "\n")
  io.stdout:flush()
  srv:run()
end

if arg and arg[0] and match(arg[0], "upstream%.lua$") then
  main(arg)
end

return _M
