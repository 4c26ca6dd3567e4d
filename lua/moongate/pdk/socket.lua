--- moongate.socket: cosockets, OpenResty's ngx.socket.tcp API over runtime/mg_lua_socket.c.
-- Every wait (connect, TLS handshake, send, receive) parks the running coroutine and lets the
-- worker serve others; network failures are returned as `nil, "message"` (OpenResty's words:
-- "timeout", "closed", "connection refused"), misuse raises. Host names are resolved on the
-- event loop by the worker's resolver (runtime/mg_dns.c: dns_* settings, dns_hostsfile, its
-- cache), the coroutine parked meanwhile. A connection lives in a
-- small C struct owned by the socket object: `close()`, `setkeepalive()` (a per-worker pool,
-- keyed by the pool name) or the garbage collector releases it.
--
--   local sock = moongate.socket.tcp()
--   sock:settimeouts(1000, 1000, 2000)
--   local ok, err = sock:connect("auth.internal", 8080)
--   local bytes, err = sock:send({ "GET / HTTP/1.1\r\n", "Host: auth\r\n\r\n" })
--   local line, err, partial = sock:receive("*l")
--   sock:setkeepalive(60000, 30)
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"
local codec = require "moongate.codec"

local C, OK, AGAIN, DECLINED = base.C, base.OK, base.AGAIN, base.DECLINED
local check, YIELDABLE = phases.check, phases.YIELDABLE
local ffi_string, ffi_gc, ffi_new = ffi.string, ffi.gc, ffi.new
local type, tostring, tonumber, error, setmetatable, getmetatable = type, tostring, tonumber,
  error, setmetatable, getmetatable
local concat, floor, ceil, yield, pairs = table.concat, math.floor, math.ceil, coroutine.yield,
  pairs

local _M = {}

local DEFAULT_TIMEOUT = 60000         -- ms, connect / send / read
local DEFAULT_KEEPALIVE = 60000       -- ms idle in the pool
local DEFAULT_POOL_SIZE = 30          -- connections per pool name (lua_socket_pool_size)
local MAX_MS = 2147483647
local MAX_PATTERN = 8191              -- receiveuntil patterns stay well inside a read buffer

-- receive modes (runtime/mg_lua_socket.c)
local SIZE, LINE, ALL, ANY, UNTIL, UNTIL_INCL = 0, 1, 2, 3, 4, 5

-- out-parameters: read right after each call, before any yield
local data_out = ffi_new("const char *[1]")
local len_out = ffi_new("size_t[1]")
local err_out = ffi_new("const char *[1]")
local sent_out = ffi_new("size_t[1]")

local CS = 1                          -- the slot holding the connection's C struct

local pdk
-- Parks the coroutine until the runtime resumes it; the runtime's notion of the running
-- request (and plugin, and phase) is saved around the yield, as moongate.sleep does.
local function wait()
  pdk = pdk or require "moongate.pdk"   -- not at load time: moongate.pdk loads this module
  local saved = pdk.save()
  yield()
  pdk.restore(saved)
end

local methods = {}
local mt = { __index = methods, __name = "moongate.socket.tcp" }
mt.__tostring = function(self)
  return "moongate.socket.tcp (" .. (self[CS] and "connected" or "closed") .. ")"
end

local function sock_of(self, fn)
  if getmetatable(self) ~= mt then
    error("bad argument #1 to '" .. fn .. "' (a socket expected; call it as sock:" .. fn
          .. "(...))", 3)
  end
  return self[CS]
end

local function timeout_arg(v, fn, i)
  if v == nil then return DEFAULT_TIMEOUT end
  if type(v) ~= "number" or v ~= v then
    error("bad argument #" .. i .. " to '" .. fn .. "' (timeout in ms must be a number)", 3)
  end
  if v <= 0 then return DEFAULT_TIMEOUT end      -- OpenResty: 0 or less = the default
  return v > MAX_MS and MAX_MS or ceil(v)
end

-- A connection made during a request belongs to it: what the plugin leaves open is closed
-- when the request ends (runtime.close_sockets), as OpenResty does, not whenever the garbage
-- collector gets to it. Connections made in timers are the timer code's to close.
local function adopt(self)
  local state = require("moongate.pdk").request_state()
  if state then
    local open = state.sockets
    if not open then
      open = {}
      state.sockets = open
    end
    open[self] = true
    self.owner = state
  end
end

local function release(self, cs)
  ffi_gc(cs, nil)
  self[CS] = nil
  local owner = self.owner
  if owner then
    owner.sockets[self] = nil
    self.owner = nil
  end
end

--- Closes what a request left open (called by the runtime when the request ends).
function _M.close_all(state)
  local open = state.sockets
  if not open then return 0 end
  local n = 0
  for sock in pairs(open) do
    local cs = sock[CS]
    if cs then
      C.mg_ffi_tcp_close(cs, err_out)
      release(sock, cs)
      n = n + 1
    end
  end
  state.sockets = nil
  return n
end

--- Creates a TCP cosocket object (not connected). @phases rewrite, access, timer, certificate
function _M.tcp()
  check(YIELDABLE, "moongate.socket.tcp")
  return setmetatable({ false, ct = DEFAULT_TIMEOUT, st = DEFAULT_TIMEOUT,
                        rt = DEFAULT_TIMEOUT }, mt)
end

--- Sets the connect, send and read timeouts at once (ms; 0 or less = the default, 60 s).
function methods.settimeout(self, ms)
  sock_of(self, "settimeout")
  local v = timeout_arg(ms, "settimeout", 1)
  self.ct, self.st, self.rt = v, v, v
end

--- Sets the connect, send and read timeouts (ms; nil keeps the default).
function methods.settimeouts(self, connect_ms, send_ms, read_ms)
  sock_of(self, "settimeouts")
  self.ct = timeout_arg(connect_ms, "settimeouts", 1)
  self.st = timeout_arg(send_ms, "settimeouts", 2)
  self.rt = timeout_arg(read_ms, "settimeouts", 3)
end

--- Connects to host (an IP address or a name) and port. With an idle connection in the pool
-- (opts.pool, default "host:port") that one is taken instead. A connection the object held
-- before is closed first. @phases rewrite, access, timer, certificate
-- @return 1, or nil and an error ("connection refused", "timeout", "... could not be resolved")
function methods.connect(self, host, port, opts)
  check(YIELDABLE, "sock:connect")
  local old = sock_of(self, "connect")
  if type(host) ~= "string" or host == "" then
    error("bad argument #1 to 'connect' (host must be a non-empty string)", 2)
  end
  if host:sub(1, 5) == "unix:" then
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
    if C.mg_ffi_tcp_close(old, err_out) ~= OK then
      return nil, ffi_string(err_out[0])
    end
    release(self, old)
  end
  pool = pool or (host .. ":" .. p)
  self.pool_name, self.pool_size = pool, pool_size and floor(pool_size) or nil

  local cs = C.mg_ffi_tcp_pool_get(pool, #pool)
  if cs ~= nil then
    self[CS] = ffi_gc(cs, C.mg_ffi_tcp_free)
    adopt(self)
    return 1
  end
  cs = C.mg_ffi_tcp_new()
  if cs == nil then
    return nil, "no memory"
  end
  cs = ffi_gc(cs, C.mg_ffi_tcp_free)
  self[CS] = cs
  adopt(self)
  local rc = C.mg_ffi_tcp_connect(cs, host, #host, p, self.ct, err_out)
  if rc == AGAIN then
    wait()
    rc = C.mg_ffi_tcp_result(cs, err_out)
  end
  if rc == OK then
    return 1
  end
  local err = ffi_string(err_out[0])
  C.mg_ffi_tcp_free(cs)
  release(self, cs)
  return nil, err
end

--- TLS over the connection: SNI with server_name, and with ssl_verify the chain against the
-- system store (SSL_CERT_FILE / SSL_CERT_DIR override it) and the name. A connection taken
-- from the pool keeps its TLS session: this returns at once.
-- @phases rewrite, access, timer, certificate
-- @return a session (for a later reused_session), true when reused_session is false, or nil
-- and an error ("handshake failed", "certificate host mismatch", "20: unable to get ...")
function methods.sslhandshake(self, reused_session, server_name, ssl_verify)
  check(YIELDABLE, "sock:sslhandshake")
  local cs = sock_of(self, "sslhandshake")
  if reused_session ~= nil and reused_session ~= false and type(reused_session) ~= "cdata" then
    error("bad argument #1 to 'sslhandshake' (a session, nil or false expected)", 2)
  end
  if server_name ~= nil and type(server_name) ~= "string" then
    error("bad argument #2 to 'sslhandshake' (server name must be a string)", 2)
  end
  if not cs then
    return nil, "closed"
  end
  local name = server_name or ""
  local rc = C.mg_ffi_tcp_sslhandshake(cs, reused_session or nil, name, #name,
                                       ssl_verify and 1 or 0, self.ct, err_out)
  if rc == AGAIN then
    wait()
    rc = C.mg_ffi_tcp_result(cs, err_out)
  end
  if rc ~= OK then
    return nil, ffi_string(err_out[0])
  end
  if reused_session == false then
    return true
  end
  local session = C.mg_ffi_tcp_ssl_session(cs)
  if session == nil then
    return true
  end
  return ffi_gc(session, C.mg_ffi_tcp_ssl_session_free)
end


--- Sends all of data (a string, a number, or a nested array of them) or fails.
-- @phases rewrite, access, timer, certificate
-- @return the number of bytes sent, or nil and an error (the connection is then closed)
function methods.send(self, data)
  check(YIELDABLE, "sock:send")
  local cs = sock_of(self, "send")
  data = codec.send_data(data)
  if not cs then
    return nil, "closed"
  end
  local len, off = #data, 0
  while true do
    local rc = C.mg_ffi_tcp_send(cs, data, len, off, self.st, sent_out, err_out)
    if rc == OK then
      return len
    elseif rc == AGAIN then
      off = tonumber(sent_out[0])
      wait()
    else
      return nil, ffi_string(err_out[0])
    end
  end
end

-- Runs a receive to its end, gluing pieces (the C side hands out a full buffer at a time).
local function recv(self, cs, mode, arg, pat, plen)
  local parts
  while true do
    local rc = C.mg_ffi_tcp_receive(cs, mode, arg, pat, plen, self.rt, data_out, len_out,
                                    err_out)
    if rc == OK then
      local s = ffi_string(data_out[0], len_out[0])
      if parts then
        parts[#parts + 1] = s
        return concat(parts)
      end
      return s
    elseif rc == DECLINED then
      local n = tonumber(len_out[0])
      parts = parts or {}
      parts[#parts + 1] = ffi_string(data_out[0], n)
      if mode == SIZE then arg = arg - n end
    elseif rc == AGAIN then
      wait()
    else
      local partial = ffi_string(data_out[0], len_out[0])
      local err = ffi_string(err_out[0])
      if parts then
        parts[#parts + 1] = partial
        partial = concat(parts)
      end
      return nil, err, partial
    end
  end
end

--- Receives by pattern: a number n (exactly n bytes), "*l" (default: a line, without its LF;
-- every CR is dropped) or "*a" (until the peer closes). @phases rewrite, access, timer, certificate
-- @return the data, or nil, an error ("timeout": the socket stays usable; "closed") and the
-- partial data received
function methods.receive(self, pattern)
  check(YIELDABLE, "sock:receive")
  local cs = sock_of(self, "receive")
  local mode, arg = LINE, 0
  if pattern == nil or pattern == "*l" then
    mode = LINE
  elseif pattern == "*a" then
    mode = ALL
  else
    local n = tonumber(pattern)
    if not n or n < 0 then
      error("bad argument #1 to 'receive' (bad pattern: " .. tostring(pattern) .. ")", 2)
    end
    mode, arg = SIZE, floor(n)
  end
  if not cs then
    return nil, "closed", ""
  end
  if mode == SIZE and arg == 0 then
    return ""
  end
  return recv(self, cs, mode, arg, nil, 0)
end

--- Receives what is there (at least one byte, at most max).
-- @phases rewrite, access, timer, certificate
function methods.receiveany(self, max)
  check(YIELDABLE, "sock:receiveany")
  local cs = sock_of(self, "receiveany")
  local n = tonumber(max)
  if not n or n < 1 then
    error("bad argument #1 to 'receiveany' (max must be a positive number)", 2)
  end
  if not cs then
    return nil, "closed", ""
  end
  return recv(self, cs, ANY, floor(n), nil, 0)
end

--- An iterator reading up to `pattern` (OpenResty semantics): `iter()` returns the data before
-- the next occurrence of the pattern (opts.inclusive: with it) and consumes the pattern;
-- `iter(size)` returns pieces of at most about size bytes, then nil (no error) once the
-- pattern was passed, and starts over on the next call. Errors: nil, err, partial.
function methods.receiveuntil(self, pattern, opts)
  sock_of(self, "receiveuntil")
  if type(pattern) ~= "string" or pattern == "" or #pattern > MAX_PATTERN then
    error("bad argument #1 to 'receiveuntil' (pattern must be a string of 1 to " .. MAX_PATTERN
          .. " bytes)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'receiveuntil' (options must be a table)", 2)
  end
  local mode = opts and opts.inclusive and UNTIL_INCL or UNTIL
  local plen = #pattern
  local finished = false
  return function(size)
    check(YIELDABLE, "the receiveuntil iterator")
    local cs = self[CS]
    local n = 0
    if size ~= nil then
      n = tonumber(size)
      if not n or n < 0 then
        error("bad argument #1 to the receiveuntil iterator (size must be a number)", 2)
      end
      n = floor(n)
    end
    if not cs then
      return nil, "closed", ""
    end
    if n == 0 then
      return recv(self, cs, mode, 0, pattern, plen)
    end
    if finished then
      finished = false
      return nil
    end
    while true do
      local rc = C.mg_ffi_tcp_receive(cs, mode, n, pattern, plen, self.rt, data_out, len_out,
                                      err_out)
      if rc == OK then
        if len_out[0] == 0 then
          return nil
        end
        finished = true
        return ffi_string(data_out[0], len_out[0])
      elseif rc == DECLINED then
        return ffi_string(data_out[0], len_out[0])
      elseif rc == AGAIN then
        wait()
      else
        local partial = ffi_string(data_out[0], len_out[0])
        return nil, ffi_string(err_out[0]), partial
      end
    end
  end
end

--- Puts the connection in the worker's pool (the one named at connect) for reuse by a later
-- connect: idle for at most timeout ms (nil: 60 s; 0: no limit), in a pool of pool_size
-- connections (nil: opts.pool_size of connect, or 30; when full, the least recently used
-- goes). The object is closed afterwards. Fails with "unread data in buffer" when received
-- bytes were left unread (the connection stays open), "closed" when it is gone.
function methods.setkeepalive(self, timeout, pool_size)
  local cs = sock_of(self, "setkeepalive")
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'setkeepalive' (timeout must be a non-negative number)", 2)
  end
  if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then
    error("bad argument #2 to 'setkeepalive' (pool size must be a positive number)", 2)
  end
  if not cs then
    return nil, "closed"
  end
  local ms = timeout == nil and DEFAULT_KEEPALIVE or (timeout > MAX_MS and MAX_MS or ceil(timeout))
  local size = floor(pool_size or self.pool_size or DEFAULT_POOL_SIZE)
  local pool = self.pool_name
  if C.mg_ffi_tcp_setkeepalive(cs, pool, #pool, ms, size, err_out) ~= OK then
    return nil, ffi_string(err_out[0])
  end
  release(self, cs)
  return 1
end

--- Closes the connection. @return 1, or nil and "closed" when there was none
function methods.close(self)
  local cs = sock_of(self, "close")
  if not cs then
    return nil, "closed"
  end
  if C.mg_ffi_tcp_close(cs, err_out) ~= OK then
    return nil, ffi_string(err_out[0])
  end
  release(self, cs)
  return 1
end

--- How many times this connection came from the pool (0 for a new one).
function methods.getreusedtimes(self)
  local cs = sock_of(self, "getreusedtimes")
  if not cs then
    return nil, "closed"
  end
  return C.mg_ffi_tcp_reused(cs)
end

--- Socket options: only "tcp-nodelay" (always on) is known.
function methods.setoption(self, option, value)
  sock_of(self, "setoption")
  if option == "tcp-nodelay" then
    return true
  end
  return nil, "unsupported option " .. tostring(option)
end

--- moongate.socket.connect(host, port, opts): tcp() and connect() in one.
-- @return the connected socket, or nil and an error
function _M.connect(host, port, opts)
  check(YIELDABLE, "moongate.socket.connect")
  local sock = _M.tcp()
  local ok, err = sock:connect(host, port, opts)
  if not ok then
    return nil, err
  end
  return sock
end

return _M
