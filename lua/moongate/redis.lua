--- moongate.redis: a Redis client (RESP2) on cosockets (moongate.socket.tcp), shaped like
-- lua-resty-redis. Every command is a method named after it (`red:get(k)`,
-- `red:set(k, v, "EX", 10)`, `red:hgetall(k)`, `red:client("ID")`...), generated on first use
-- and sent as a binary-safe array of bulk strings: arguments are strings or numbers, integral
-- numbers written as integers ("10", not "10.0"), others with full precision.
--
--   local red = moongate.redis.new()
--   red:set_timeouts(1000, 1000, 1000)
--   local ok, err = red:connect("127.0.0.1", 6379, { password = pw, database = 2 })
--   if not ok then return nil, "could not connect to redis: " .. err end
--   local n, err = red:incr("hits:" .. key)
--   red:set_keepalive(60000, 50)
--
-- Replies: a status reply is its text ("OK", "PONG"); an integer a number; a bulk string a
-- string; an array a Lua array. A null bulk or null array reply is `nil` (with no error: `err`
-- tells it apart from a failure); inside an array it is `moongate.redis.null` (cjson.null,
-- like OpenResty's ngx.null), so arrays keep their length. An error reply returns
-- `nil, "ERR ..."` (the whole message, its prefix included: "WRONGTYPE ...", "NOSCRIPT ...");
-- inside an array or a pipeline's results it is `{ false, "ERR ..." }`.
-- Failures (connect, "timeout", "closed", a reply that is not RESP) return `nil, "message"`
-- and close the connection, so a late reply can never be read as the answer to the next
-- command. Misuse (an argument that is not a string or a number) raises.
--
-- Connections: `connect()` takes an idle connection from the worker's pool when there is
-- one. AUTH (`password`, and `username` for an ACL user) and SELECT (`database`) are sent only
-- on new connections; the default pool name includes host, port, TLS, user, a digest of the
-- password and the database, so pooled connections never cross them.
-- Scripts: `red:eval(src, nkeys, ...)`, `red:evalsha(sha, nkeys, ...)`, `red:script("LOAD",
-- src)`, and `red:eval_cached(src, nkeys, ...)`: EVALSHA with the script's SHA-1 (computed
-- here in Lua, `moongate.redis.sha1_hex()`), then EVAL when the server answers NOSCRIPT (which
-- caches the script for the next EVALSHA).
local bit = require "bit"
-- the cosocket implementation is looked up when a connection is made: the running gateway's
-- (moongate.socket, over FFI) or the in-process test kit's (moongate.spec.pdk)
local function tcp()
  local m = rawget(_G, "moongate")
  return (m and m.socket or require "moongate.pdk.socket").tcp()
end
local phases = require "moongate.phases"

local type, tostring, tonumber, error, setmetatable, getmetatable, select, pairs =
  type, tostring, tonumber, error, setmetatable, getmetatable, select, pairs
local byte, find, fmt, lower, rep, sub, char =
  string.byte, string.find, string.format, string.lower, string.rep, string.sub, string.char
local concat = table.concat
local floor = math.floor
local band, bor, bxor, bnot, lshift, rol, tobit, tohex =
  bit.band, bit.bor, bit.bxor, bit.bnot, bit.lshift, bit.rol, bit.tobit, bit.tohex

local check, YIELDABLE = phases.check, phases.YIELDABLE

local _M = { _VERSION = "0.1.0" }

local ok_cjson, cjson = pcall(require, "cjson")
--- The value of a null element inside an array reply (cjson.null, a light userdata NULL).
_M.null = ok_cjson and cjson.null or setmetatable({}, { __tostring = function() return "null" end })
local null = _M.null

local DEFAULT_PORT = 6379
local MAX_BULK = 512 * 1024 * 1024    -- Redis's own proto-max-bulk-len default
local MAX_ARRAY = 16 * 1024 * 1024    -- elements in one array reply
local MAX_DEPTH = 64                  -- nested arrays in one reply
local MAX_CACHED = 512                -- generated command methods, and cached script digests

local sha1_hex = require("moongate.sha1").hex   -- for EVALSHA

--- The SHA-1 of a string as 40 lower-case hex digits (what SCRIPT LOAD answers). @phases any
function _M.sha1_hex(s)
  if type(s) ~= "string" then error("bad argument #1 to 'sha1_hex' (string expected)", 2) end
  return sha1_hex(s)
end

local digests, ndigests = {}, 0
local function script_sha(src)
  local sha = digests[src]
  if not sha then
    sha = sha1_hex(src)
    if ndigests >= MAX_CACHED then digests, ndigests = {}, 0 end
    digests[src], ndigests = sha, ndigests + 1
  end
  return sha
end

--------------------------------------------------------------------------------------------
-- Objects
--------------------------------------------------------------------------------------------

local methods = {}
local mt = { __index = methods, __name = "moongate.redis" }

--- Creates a client (no connection yet; connect, commands, pipelines and scripts run in the
-- rewrite, access and timer phases). @phases any
function _M.new()
  return setmetatable({ sock = false, reqs = false, subscribed = false,
                        ct = false, st = false, rt = false }, mt)
end

local function check_self(self, fn)
  if type(self) ~= "table" or getmetatable(self) ~= mt then
    error("bad argument #1 to '" .. fn .. "' (a redis client expected; call it as red:" .. fn
          .. "(...))", 3)
  end
end

local function ms_arg(v, fn, i)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
    error("bad argument #" .. i .. " to '" .. fn .. "' (timeout in ms must be a number >= 0)",
          3)
  end
  return v or false
end

local function apply_timeouts(self)
  if self.sock then
    self.sock:settimeouts(self.ct or nil, self.st or nil, self.rt or nil)
  end
end

--- Sets the connect, send and read timeouts (ms; nil or 0: the socket's default, 60 s), for
-- the next connect and for the current connection.
function methods.set_timeouts(self, connect_ms, send_ms, read_ms)
  check_self(self, "set_timeouts")
  self.ct = ms_arg(connect_ms, "set_timeouts", 1)
  self.st = ms_arg(send_ms, "set_timeouts", 2)
  self.rt = ms_arg(read_ms, "set_timeouts", 3)
  apply_timeouts(self)
end

--- Sets the three timeouts to one value (ms).
function methods.set_timeout(self, ms)
  check_self(self, "set_timeout")
  local v = ms_arg(ms, "set_timeout", 1)
  self.ct, self.st, self.rt = v, v, v
  apply_timeouts(self)
end

-- Forgets the connection after a failure: its state is unknown, so it is closed.
local function drop(self)
  local sock = self.sock
  if sock then sock:close() end
  self.sock, self.reqs, self.subscribed = false, false, false
end

--------------------------------------------------------------------------------------------
-- The protocol
--------------------------------------------------------------------------------------------

local function format_number(n)
  if n ~= n or n == 1 / 0 or n == -1 / 0 then
    return nil
  end
  if n % 1 == 0 and n > -2^63 and n < 2^63 then
    return fmt("%d", n)
  end
  local s = fmt("%.14g", n)
  if tonumber(s) ~= n then s = fmt("%.17g", n) end
  return s
end

-- The request for one command, as a string. Raises at the user's level (`lvl`, counted from
-- this function) on an argument that is neither a string nor a number.
local function gen_req(name, lvl, ...)
  local n = select("#", ...)
  local args = { ... }
  if name == "hmset" and n == 2 and type(args[2]) == "table" then   -- hmset(key, {f = v})
    local t = args[2]
    args, n = { args[1] }, 1
    for k, v in pairs(t) do
      args[n + 1], args[n + 2], n = k, v, n + 2
    end
  end
  local out = { "*", n + 1, "\r\n$", #name, "\r\n", name, "\r\n" }
  local j = #out
  for i = 1, n do
    local a = args[i]
    local t = type(a)
    if t == "number" then
      a = format_number(a)
      if not a then
        error(fmt("bad argument #%d to '%s' (a finite number expected)", i, name), lvl)
      end
    elseif t ~= "string" then
      error(fmt("bad argument #%d to '%s' (string or number expected, got %s)", i, name, t),
            lvl)
    end
    out[j + 1], out[j + 2], out[j + 3], out[j + 4] = "$", #a, "\r\n", a
    out[j + 5] = "\r\n"
    j = j + 5
  end
  return concat(out)
end

local function bad_reply(what)
  return nil, "bad reply from redis: " .. what
end

-- Reads one reply. Returns the value (null for a null bulk or array), or false and the
-- message of an error reply, or nil and the failure (network or protocol) and, for a
-- failure before the first byte of the reply, true (the connection is still in step).
local function read_reply(sock, depth)
  local line, err, partial = sock:receive("*l")
  if not line then
    return nil, err, depth == 0 and partial == ""
  end
  local prefix = byte(line)
  if prefix == 36 then                                  -- "$" bulk string
    local n = tonumber(sub(line, 2))
    if n == -1 then return null end
    if not n or n < 0 or n % 1 ~= 0 or n > MAX_BULK then
      return bad_reply(sub(line, 1, 32))
    end
    local data
    data, err = sock:receive(n + 2)
    if not data then return nil, err end
    if sub(data, -2) ~= "\r\n" then return bad_reply("bulk string not ended by CRLF") end
    return sub(data, 1, n)
  elseif prefix == 43 then                              -- "+" status
    return sub(line, 2)
  elseif prefix == 58 then                              -- ":" integer
    local n = tonumber(sub(line, 2))
    if not n then return bad_reply(sub(line, 1, 32)) end
    return n
  elseif prefix == 45 then                              -- "-" error
    return false, sub(line, 2)
  elseif prefix == 42 then                              -- "*" array
    local n = tonumber(sub(line, 2))
    if n == -1 then return null end
    if not n or n < 0 or n % 1 ~= 0 or n > MAX_ARRAY then
      return bad_reply(sub(line, 1, 32))
    end
    if depth >= MAX_DEPTH then return bad_reply("arrays nested too deep") end
    local t = {}
    for i = 1, n do
      local v
      v, err = read_reply(sock, depth + 1)
      if v == nil then return nil, err end
      if v == false then v = { false, err } end
      t[i] = v
    end
    return t
  end
  return bad_reply(sub(line, 1, 32))
end

-- Sends a command and reads its reply (or queues it in a pipeline).
local function do_cmd(self, name, lvl, ...)
  local req = gen_req(name, lvl + 1, ...)
  local reqs = self.reqs
  if reqs then
    reqs[#reqs + 1] = req
    return true
  end
  local sock = self.sock
  if not sock then return nil, "not connected" end
  local ok, err = sock:send(req)
  if not ok then
    drop(self)
    return nil, err
  end
  local v
  v, err = read_reply(sock, 0)
  if v == nil then
    drop(self)
    return nil, err
  end
  if v == false then return nil, err end
  if v == null then return nil end
  return v
end

local SUBSCRIBE = { subscribe = true, psubscribe = true, ssubscribe = true }
local UNSUBSCRIBE = { unsubscribe = true, punsubscribe = true, sunsubscribe = true }

local function make_command(name)
  local lname = lower(name)
  if SUBSCRIBE[lname] then
    return function(self, ...)
      check_self(self, name)
      check(YIELDABLE, "red:" .. name)
      local res, err = do_cmd(self, lname, 3, ...)
      if type(res) == "table" then self.subscribed = true end
      return res, err
    end
  elseif UNSUBSCRIBE[lname] then
    return function(self, ...)
      check_self(self, name)
      check(YIELDABLE, "red:" .. name)
      local res, err = do_cmd(self, lname, 3, ...)
      if type(res) == "table" and res[3] == 0 then self.subscribed = false end
      return res, err
    end
  end
  return function(self, ...)
    check_self(self, name)
    check(YIELDABLE, "red:" .. name)
    local res, err = do_cmd(self, lname, 3, ...)
    return res, err
  end
end

local ncommands = 0
setmetatable(methods, { __index = function(t, name)
  if type(name) ~= "string" or not find(name, "^%a[%w_]*$") then return nil end
  local f = make_command(name)
  if ncommands < MAX_CACHED then
    ncommands = ncommands + 1
    t[name] = f
  end
  return f
end })

--- Sends any command: `red:do_cmd("CLIENT", "ID")` is `red:client("ID")`.
function methods.do_cmd(self, name, ...)
  check_self(self, "do_cmd")
  check(YIELDABLE, "red:do_cmd")
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'do_cmd' (a command name expected)", 2)
  end
  local res, err = do_cmd(self, name, 3, ...)
  return res, err
end

--- Reads one more reply (pub/sub messages). @return as a command, or nil and "timeout"
-- (the connection stays usable) or another failure
function methods.read_reply(self)
  check_self(self, "read_reply")
  check(YIELDABLE, "red:read_reply")
  local sock = self.sock
  if not sock then return nil, "not connected" end
  local v, err, clean = read_reply(sock, 0)
  if v == nil then
    if not (err == "timeout" and clean) then drop(self) end
    return nil, err
  end
  if v == false then return nil, err end
  if v == null then return nil end
  if type(v) == "table" and UNSUBSCRIBE[lower(tostring(v[1]))] and v[3] == 0 then
    self.subscribed = false
  end
  return v
end

--------------------------------------------------------------------------------------------
-- Connections
--------------------------------------------------------------------------------------------

--- Connects to host and port (default 6379), or takes an idle connection from the pool.
-- opts: `pool` (name), `pool_size`, `ssl` (TLS), `ssl_verify`, `server_name`, `password`,
-- `username`, `database`; AUTH and SELECT are sent on new connections only. A connection the
-- client held is closed first. @phases rewrite, access, timer, certificate
-- @return 1, or nil and an error: the socket's ("connection refused", "timeout"), or the
-- server's answer to AUTH or SELECT ("WRONGPASS ...", "ERR DB index is out of range")
function methods.connect(self, host, port, opts)
  check_self(self, "connect")
  check(YIELDABLE, "red:connect")
  if type(host) ~= "string" or host == "" then
    error("bad argument #1 to 'connect' (host must be a non-empty string)", 2)
  end
  if type(port) == "table" and opts == nil then port, opts = nil, port end
  port = port or DEFAULT_PORT
  if type(port) ~= "number" and type(port) ~= "string" then
    error("bad argument #2 to 'connect' (port must be a number)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #3 to 'connect' (options must be a table)", 2)
  end
  opts = opts or {}
  local password, username, database = opts.password, opts.username, opts.database
  if password ~= nil and type(password) ~= "string" then
    error("bad argument #3 to 'connect' (opts.password must be a string)", 2)
  end
  if username ~= nil and (type(username) ~= "string" or not password) then
    error("bad argument #3 to 'connect' (opts.username must be a string, with a password)", 2)
  end
  if database ~= nil and (type(database) ~= "number" or database < 0 or database % 1 ~= 0) then
    error("bad argument #3 to 'connect' (opts.database must be an integer >= 0)", 2)
  end
  local pool = opts.pool
  if pool == nil then
    pool = fmt("redis:%s:%s:%s:%s:%s:%d", host, tostring(port), opts.ssl and "tls" or "",
               username or "", password and sub(sha1_hex(password), 1, 16) or "",
               database or 0)
  end

  drop(self)
  local sock = tcp()
  sock:settimeouts(self.ct or nil, self.st or nil, self.rt or nil)
  local ok, err = sock:connect(host, port, { pool = pool, pool_size = opts.pool_size })
  if not ok then
    return nil, err
  end
  self.sock = sock
  if sock:getreusedtimes() > 0 then
    return 1
  end
  if opts.ssl then
    ok, err = sock:sslhandshake(false, opts.server_name, opts.ssl_verify)
    if not ok then
      drop(self)
      return nil, err
    end
  end
  if password then
    if username then
      ok, err = do_cmd(self, "auth", 3, username, password)
    else
      ok, err = do_cmd(self, "auth", 3, password)
    end
    if not ok then
      drop(self)
      return nil, err
    end
  end
  if database and database ~= 0 then
    ok, err = do_cmd(self, "select", 3, database)
    if not ok then
      drop(self)
      return nil, err
    end
  end
  return 1
end

--- How many times the connection came from the pool (0: a new one), or nil and
-- "not connected".
function methods.get_reused_times(self)
  check_self(self, "get_reused_times")
  if not self.sock then return nil, "not connected" end
  return self.sock:getreusedtimes()
end

--- Puts the connection in the worker's pool (idle at most timeout ms, nil: 60 s; pool size).
-- Refused (nil, "subscribed state") after SUBSCRIBE: close it instead. A pipeline not
-- committed is dropped. @return 1, or nil and an error
function methods.set_keepalive(self, timeout, size)
  check_self(self, "set_keepalive")
  local sock = self.sock
  if not sock then return nil, "not connected" end
  if self.subscribed then return nil, "subscribed state" end
  self.sock, self.reqs = false, false
  local ok, err = sock:setkeepalive(timeout, size)
  if not ok then
    sock:close()
    return nil, err
  end
  return 1
end

--- Closes the connection. @return 1, or nil and "not connected"
function methods.close(self)
  check_self(self, "close")
  if not self.sock then return nil, "not connected" end
  drop(self)
  return 1
end

--------------------------------------------------------------------------------------------
-- Pipelines and scripts
--------------------------------------------------------------------------------------------

--- Starts a pipeline: commands are queued (each returns true) until commit_pipeline().
function methods.init_pipeline(self)
  check_self(self, "init_pipeline")
  self.reqs = {}
end

--- Drops the queued commands.
function methods.cancel_pipeline(self)
  check_self(self, "cancel_pipeline")
  self.reqs = false
end

--- Sends the queued commands at once and reads their replies. @return an array with one
-- entry per command (a null reply is moongate.redis.null, an error reply { false, "ERR..." }),
-- or nil and a failure
function methods.commit_pipeline(self)
  check_self(self, "commit_pipeline")
  check(YIELDABLE, "red:commit_pipeline")
  local reqs = self.reqs
  if not reqs then return nil, "no pipeline" end
  self.reqs = false
  if #reqs == 0 then return {} end
  local sock = self.sock
  if not sock then return nil, "not connected" end
  local ok, err = sock:send(concat(reqs))
  if not ok then
    drop(self)
    return nil, err
  end
  local out = {}
  for i = 1, #reqs do
    local v
    v, err = read_reply(sock, 0)
    if v == nil then
      drop(self)
      return nil, err
    end
    if v == false then v = { false, err } end
    out[i] = v
  end
  return out
end

--- EVALSHA with the script's SHA-1, then EVAL when the server does not know the script
-- (NOSCRIPT). Within a pipeline it queues EVAL. @return as eval
function methods.eval_cached(self, script, nkeys, ...)
  check_self(self, "eval_cached")
  check(YIELDABLE, "red:eval_cached")
  if type(script) ~= "string" then
    error("bad argument #1 to 'eval_cached' (script source expected)", 2)
  end
  if self.reqs then
    local res, err = do_cmd(self, "eval", 3, script, nkeys, ...)
    return res, err
  end
  local res, err = do_cmd(self, "evalsha", 3, script_sha(script), nkeys, ...)
  if res == nil and err and find(err, "^NOSCRIPT") then
    res, err = do_cmd(self, "eval", 3, script, nkeys, ...)
  end
  return res, err
end

--- A flat array { k1, v1, k2, v2, ... } (HGETALL, CONFIG GET) as a table { k1 = v1, ... }.
function methods.array_to_hash(self, t)
  if type(t) ~= "table" then
    error("bad argument #1 to 'array_to_hash' (table expected)", 2)
  end
  local h = {}
  for i = 1, #t, 2 do
    h[t[i]] = t[i + 1]
  end
  return h
end

return _M
