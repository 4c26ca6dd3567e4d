--- moongate.spec.helpers: start the real gateway and real upstreams from busted specs.
--
-- A small facade in Kong's manner (DESIGN.md §5): `start()` writes a config table as JSON into
-- a fresh prefix directory under /tmp and runs `$MOONGATE_BIN run -c FILE` in the background;
-- `upstream()` runs moongate.spec.upstream (an HTTP/1.1 echo server with failure modes) as a
-- child process; `nginx()` a real nginx (an HTTPS backend, for upstream TLS), `process()`
-- any other command (an `openssl ocsp` responder, say); a plain HTTP/1.1 client, a raw-bytes
-- client and a response parser talk to any of them; `eventually()` waits for asynchronous
-- effects.
--
-- Processes: every process started here runs under a small sh wrapper that records its exit
-- status and kills it (SIGTERM, then SIGKILL) within a second or so of this Lua process
-- disappearing, so a crashed or interrupted busted leaves nothing behind. When the module is
-- collected (busted closes the Lua state at exit) it stops whatever is still running and
-- removes its prefix directories (keep them with MOONGATE_SPEC_KEEP=1). Only processes
-- started here are ever signalled, always by pid.
--
-- Environment: MOONGATE_BIN (default "./build/moongate"), MOONGATE_LUAJIT (default "luajit",
-- runs the upstream), MOONGATE_SPEC_KEEP (keep prefix directories).

local socket = require "socket"
local cjson = require "cjson.safe"
local ffi = require "ffi"

local fmt, match, gsub, find, sub, lower, byte =
  string.format, string.match, string.gsub, string.find, string.sub, string.lower,
  string.byte
local concat, sort = table.concat, table.sort
local min, max, huge = math.min, math.max, math.huge
local unpack = unpack or table.unpack

local _M = {}

local DEFAULT_BIN = "./build/moongate"
local START_TIMEOUT = 10
local STOP_TIMEOUT = 10
local READ_SIZE = 65536

pcall(ffi.cdef, "long recv(int sockfd, void *buf, unsigned long len, int flags);")
local C = ffi.C
local recv_buf = ffi.new("uint8_t[?]", READ_SIZE)
local EINTR, EAGAIN, ECONNRESET = 4, 11, 104

--------------------------------------------------------------------------------------------
-- Small utilities
--------------------------------------------------------------------------------------------

--- Seconds since the epoch, with sub-millisecond resolution.
-- @treturn number
function _M.now()
  return socket.gettime()
end

--- Sleeps without busy-waiting.
-- @tparam number s seconds
function _M.sleep(s)
  socket.sleep(s)
end

local function shell_quote(s)
  return "'" .. gsub(tostring(s), "'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local data = f:read("*a")
  f:close()
  return data
end

local function write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then
    error("could not write " .. path .. ": " .. tostring(err), 3)
  end
  f:write(data)
  f:close()
end

-- Runs a shell command; returns its output (stdout and, with `2>&1`, stderr) and exit code.
local function run(cmd)
  local p = assert(io.popen(cmd .. "\necho \"__moongate_rc=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local body, rc = match(out, "^(.-)__moongate_rc=(%d+)\n?$")
  return body or out, tonumber(rc)
end

--- Reads a whole file.
-- @param path file name
-- @return its contents, or nil when it cannot be opened
_M.read_file = read_file

--- Writes a whole file (raises on failure).
-- @param path file name
-- @param data contents
_M.write_file = write_file

--- Quotes a string for a POSIX shell command line.
_M.shell_quote = shell_quote

--- Runs a shell command line.
-- @param cmd the command (add `2>&1` to capture stderr)
-- @return its output and its exit code
_M.run = run

local function split_lines(s)
  local lines = {}
  for line in (gsub(s, "\r", "") .. "\n"):gmatch("(.-)\n") do
    lines[#lines + 1] = line
  end
  while lines[#lines] == "" do
    lines[#lines] = nil
  end
  return lines
end

local OWN_PID = tonumber(match(read_file("/proc/self/stat") or "", "^(%d+)"))

--------------------------------------------------------------------------------------------
-- JSON encoding with control over arrays
--------------------------------------------------------------------------------------------

local array_mt = { __name = "moongate.spec.helpers.array" }

--- Marks a table as a JSON array, so that an empty one encodes as `[]` (plain empty tables
-- encode as `{}`, which is what plugin `config = {}` wants).
-- @tparam[opt] table t
-- @treturn table t
function _M.array(t)
  return setmetatable(t or {}, array_mt)
end

--- An empty JSON array (`[]`) for config tables; do not modify it.
_M.empty_array = _M.array({})

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function encode_string(s)
  return '"' .. gsub(s, '[%c"\\]', function(c)
    return ESCAPES[c] or fmt("\\u%04x", byte(c))
  end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == array_mt then
    return true
  end
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then
      return false
    end
    n = max(n, k)
  end
  return n > 0 and n == #t
end

local function encode(v, out, depth)
  local t = type(v)
  if v == nil or v == cjson.null then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "number" then
    if v ~= v or v == huge or v == -huge then
      error("cannot encode " .. tostring(v) .. " as JSON", depth + 2)
    end
    out[#out + 1] = (v % 1 == 0 and v > -2^53 and v < 2^53) and fmt("%.0f", v)
                    or fmt("%.17g", v)
  elseif t == "string" then
    out[#out + 1] = encode_string(v)
  elseif t == "table" then
    if depth > 64 then
      error("table too deep (or cyclic) for JSON", depth + 2)
    end
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          error("JSON object keys must be strings, got " .. type(k), depth + 2)
        end
        keys[#keys + 1] = k
      end
      sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k) .. ":"
        encode(v[k], out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot encode a " .. t .. " as JSON", depth + 2)
  end
end

--- Encodes a value as JSON: object keys sorted, `/` not escaped, tables with keys 1..n as
-- arrays, empty tables as `{}` unless marked with `helpers.array()` (or `helpers.empty_array`).
-- @param v value
-- @treturn string
function _M.json_encode(v)
  local out = {}
  encode(v, out, 1)
  return concat(out)
end

--------------------------------------------------------------------------------------------
-- Processes
--------------------------------------------------------------------------------------------

local tracked = {}        -- objects with :running(), :signal(), .proc; stopped at exit
local prefixes = {}       -- directories to remove at exit

local function make_tmpdir(kind)
  local out, rc = run("mktemp -d /tmp/moongate-spec." .. kind .. ".XXXXXX 2>&1")
  local dir = match(out, "^(%S+)")
  if rc ~= 0 or not dir then
    error("could not create a temporary directory: " .. out, 3)
  end
  prefixes[#prefixes + 1] = dir
  return dir
end

local function make_prefix(kind)
  local dir = make_tmpdir(kind)
  assert(os.execute("mkdir -p " .. shell_quote(dir .. "/logs")))
  return dir
end

--- A new directory /tmp/moongate-spec.KIND.XXXXXX, removed with everything in it when the
-- spec process ends (as the gateways' prefixes are).
-- @tparam string kind a word for the directory's name
function _M.tmpdir(kind)
  return make_tmpdir(kind)
end

local function proc_state(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then
    return nil
  end
  -- "pid (comm) S ppid ...": comm may hold spaces and parentheses, so anchor on the last ")".
  local state, ppid = match(stat, "^.*%) (%S) (%d+)")
  return state, tonumber(ppid)
end

local function pid_alive(pid)
  local state = proc_state(pid)
  return state ~= nil and state ~= "Z" and state ~= "X"
end

local function signal_pid(pid, sig)
  sig = gsub(tostring(sig or "TERM"), "^SIG", "")
  local rc = os.execute(fmt("kill -%s %d 2>/dev/null", sig, pid))
  return rc == 0 or rc == true
end

-- Starts `cmd` (a shell command line) in the background with stdout, stderr and the exit
-- status in files under `dir`. Returns { pid, out, err, exit_file }, where pid is the
-- command's own pid (not a shell's).
local function spawn(cmd, dir)
  local p = {
    out = dir .. "/stdout.log", err = dir .. "/stderr.log", exit_file = dir .. "/exit_status",
  }
  os.remove(p.exit_file)
  local script = fmt([[
( %s >%s 2>%s </dev/null &
  c=$!
  echo "$c"
  exec >/dev/null 2>&1
  ( while kill -0 "$c" 2>/dev/null; do
      if ! kill -0 %d 2>/dev/null; then
        kill -TERM "$c"; i=0
        while kill -0 "$c" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$c" 2>/dev/null; exit 0
      fi
      sleep 1
    done ) &
  wait "$c"
  echo "$?" >%s
) &]], cmd, shell_quote(p.out), shell_quote(p.err), OWN_PID or 1, shell_quote(p.exit_file))
  local pipe = assert(io.popen(script, "r"))
  local line = pipe:read("*l")
  pipe:close()
  p.pid = tonumber(line)
  if not p.pid then
    error("could not start: " .. cmd, 3)
  end
  return p
end

local function proc_exit_code(p)
  return tonumber(match(read_file(p.exit_file) or "", "^(%d+)"))
end

local function proc_running(p)
  return proc_exit_code(p) == nil and pid_alive(p.pid)
end

-- Waits up to `timeout` seconds for the process to end; returns its exit status (128 + N
-- for signal N) or nil if it still runs.
local function proc_wait(p, timeout)
  local deadline = _M.now() + timeout
  repeat
    local code = proc_exit_code(p)
    if code then
      return code
    end
    if not pid_alive(p.pid) then
      -- Gone, and its wrapper is about to write the status.
      local grace = _M.now() + 1
      repeat
        code = proc_exit_code(p)
        if code then return code end
        _M.sleep(0.01)
      until _M.now() > grace
      return -1
    end
    _M.sleep(0.02)
  until _M.now() > deadline
  return nil
end

-- Directory listing through libc (FFI): no userdata with a C finalizer is left behind. lfs's
-- directory objects have one, and when one is still uncollected at lua_close it can run after
-- lfs.so is unloaded: busted then segfaults at exit, which counts as a failed run.
local dirent_ok = pcall(ffi.cdef, [[
  typedef struct moongate_dir moongate_dir_t;
  struct moongate_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
                           unsigned char d_type; char d_name[256]; };
  moongate_dir_t *opendir(const char *name);
  struct moongate_dirent *readdir(moongate_dir_t *dirp);
  int closedir(moongate_dir_t *dirp);
]])

local function list_dir(path)
  local names = {}
  if dirent_ok and ffi.os == "Linux" then
    local d = C.opendir(path)
    if d == nil then
      return names
    end
    for _ = 1, 1000000 do
      local e = C.readdir(d)
      if e == nil then break end
      local name = ffi.string(e.d_name)
      if name ~= "." and name ~= ".." then
        names[#names + 1] = name
      end
    end
    C.closedir(d)
  else
    local out = run("ls -1 " .. shell_quote(path) .. " 2>/dev/null")
    names = split_lines(out)
  end
  return names
end

local function child_pids(pid)
  local pids, seen = {}, {}
  local any_children_file = false
  for _, tid in ipairs(list_dir("/proc/" .. pid .. "/task")) do
    local data = read_file(fmt("/proc/%d/task/%s/children", pid, tid))
    if data then
      any_children_file = true
      for child in data:gmatch("%d+") do
        child = tonumber(child)
        if not seen[child] and pid_alive(child) then
          seen[child] = true
          pids[#pids + 1] = child
        end
      end
    end
  end
  if not any_children_file then          -- kernel without CONFIG_PROC_CHILDREN: scan /proc
    for _, name in ipairs(list_dir("/proc")) do
      local child = tonumber(name)
      if child then
        local state, ppid = proc_state(child)
        if ppid == pid and state ~= "Z" and state ~= "X" then
          pids[#pids + 1] = child
        end
      end
    end
  end
  sort(pids)
  return pids
end

-- Stops processes: SIGTERM, up to `timeout` seconds, SIGKILL for what is left (and for the
-- given `extra` pids, the gateway's workers, if they outlive their master).
local function terminate(procs, extra, timeout)
  for _, p in ipairs(procs) do
    if proc_running(p) then
      signal_pid(p.pid, "TERM")
    end
  end
  local deadline = _M.now() + timeout
  for _, p in ipairs(procs) do
    if not proc_wait(p, max(0, deadline - _M.now())) then
      signal_pid(p.pid, "KILL")
      proc_wait(p, 2)
    end
  end
  if extra and #extra > 0 then
    local grace = _M.now() + 2
    for _, pid in ipairs(extra) do
      while pid_alive(pid) and _M.now() < grace do
        _M.sleep(0.02)
      end
      if pid_alive(pid) then
        signal_pid(pid, "KILL")
      end
    end
  end
end

-- At exit (busted closes the Lua state) or when busted drops this module between spec
-- files: stop what is still running, remove the prefixes.
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = function()
  pcall(function()
    local procs, extra = {}, {}
    for _, obj in ipairs(tracked) do
      if obj.proc and proc_running(obj.proc) then
        procs[#procs + 1] = obj.proc
        if obj.worker_pids then
          for _, pid in ipairs(obj:worker_pids()) do
            extra[#extra + 1] = pid
          end
        end
      end
    end
    terminate(procs, extra, 5)
    if not os.getenv("MOONGATE_SPEC_KEEP") then
      for _, dir in ipairs(prefixes) do
        if match(dir, "^/tmp/moongate%-spec%.") then
          os.execute("rm -rf " .. shell_quote(dir))
        end
      end
    end
  end)
end
_M._sentinel = sentinel

--------------------------------------------------------------------------------------------
-- Ports
--------------------------------------------------------------------------------------------

--- A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
-- @treturn number
function _M.get_free_port()
  local s = assert(socket.tcp4())
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function port_accepts(port, host)
  local s = socket.tcp4()
  s:settimeout(0.2)
  local ok = s:connect(host or "127.0.0.1", port)
  s:close()
  return ok == 1
end

--------------------------------------------------------------------------------------------
-- Client connections
--------------------------------------------------------------------------------------------

local Client = {}
Client.__index = Client

--- Opens a TCP connection: the building block of `request()` and `raw()`, and the way to
-- hold a connection across requests (keep-alive, pipelining, WebSocket).
-- Reads use recv(2) directly, so a reset (RST) is told apart from a close (FIN).
-- @tparam number port
-- @tparam[opt] table opts `host` (default "127.0.0.1"; "::1" connects over IPv6),
-- `timeout` (seconds for each operation, default 5), `source` (the local address to bind,
-- e.g. "127.0.0.2": Linux routes all of 127/8 to lo, so specs can be several clients)
-- @return a client, or nil and an error message
function _M.connect(port, opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local sock = host:find(":", 1, true) and socket.tcp6() or socket.tcp()
  local timeout = opts.timeout or 5
  if opts.source then
    local ok, err = sock:bind(opts.source, 0)
    if not ok then
      sock:close()
      return nil, fmt("could not bind to %s: %s", opts.source, err)
    end
  end
  sock:settimeout(timeout)
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, fmt("could not connect to %s:%s: %s", host, tostring(port), err)
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({ sock = sock, fd = sock:getfd(), buf = "", pos = 1, host = host,
                        port = port, timeout = timeout }, Client)
end

--- Sends bytes.
-- @tparam string data
-- @return true, or nil and an error message ("closed", "timeout", ...)
function Client:send(data)
  self.sock:settimeout(self.timeout)
  local ok, err = self.sock:send(data)
  if not ok then
    return nil, err
  end
  return true
end

--- Half-closes the connection: the peer reads EOF, this side can still read.
function Client:shutdown_send()
  self.sock:shutdown("send")
end

--- Closes the connection.
function Client:close()
  self.sock:close()
end

-- Appends at least one byte to the buffer, waiting until `deadline`.
-- Returns true, or nil and "closed" (FIN), "reset" (RST), "timeout" or another error.
function Client:fill(deadline)
  while true do
    local n = tonumber(C.recv(self.fd, recv_buf, READ_SIZE, 0))
    if n > 0 then
      local got = ffi.string(recv_buf, n)
      if self.pos > #self.buf then
        self.buf = got
      else
        self.buf = sub(self.buf, self.pos) .. got
      end
      self.pos = 1
      return true
    elseif n == 0 then
      return nil, "closed"
    end
    local errno = ffi.errno()
    if errno == ECONNRESET then
      return nil, "reset"
    elseif errno ~= EAGAIN and errno ~= EINTR then
      return nil, "recv failed: errno " .. errno
    end
    local left = deadline - _M.now()
    if left <= 0 then
      return nil, "timeout"
    end
    socket.select({ self.sock }, nil, min(left, 1))
  end
end

function Client:buffered()
  return #self.buf - self.pos + 1
end

-- Up to n buffered bytes, reading first if nothing is buffered.
function Client:take(n, deadline)
  if self.pos > #self.buf then
    local ok, err = self:fill(deadline)
    if not ok then
      return nil, err
    end
  end
  local s = sub(self.buf, self.pos, self.pos + n - 1)
  self.pos = self.pos + #s
  return s
end

--- Receives exactly n bytes.
-- @tparam number n
-- @tparam[opt] number timeout seconds (default: the connection's)
-- @return the bytes, or nil, an error ("closed", "reset", "timeout") and what did arrive
function Client:receive(n, timeout)
  local deadline = _M.now() + (timeout or self.timeout)
  while self:buffered() < n do
    local ok, err = self:fill(deadline)
    if not ok then
      local partial = sub(self.buf, self.pos)
      self.buf, self.pos = "", 1
      return nil, err, partial
    end
  end
  local s = sub(self.buf, self.pos, self.pos + n - 1)
  self.pos = self.pos + n
  return s
end

--- Receives a line, without its CRLF (or LF).
-- @tparam[opt] number timeout seconds
-- @return the line, or nil and an error message
function Client:receive_line(timeout)
  local deadline = _M.now() + (timeout or self.timeout)
  while true do
    local e = find(self.buf, "\n", self.pos, true)
    if e then
      local line = sub(self.buf, self.pos, e - 1)
      self.pos = e + 1
      return (gsub(line, "\r$", ""))
    end
    local ok, err = self:fill(deadline)
    if not ok then
      return nil, err
    end
  end
end

--- Receives until the peer closes the connection or the timeout expires.
-- @tparam[opt] number timeout seconds
-- @return everything received, and how it ended: "closed", "reset" or "timeout"
function Client:receive_all(timeout)
  local deadline = _M.now() + (timeout or self.timeout)
  local parts = {}
  while true do
    local ok, err = self:fill(deadline)
    parts[#parts + 1] = sub(self.buf, self.pos)
    self.buf, self.pos = "", 1
    if not ok then
      return concat(parts), err
    end
  end
end

--------------------------------------------------------------------------------------------
-- HTTP responses
--------------------------------------------------------------------------------------------

local Response = {}
Response.__index = Response

--- Decodes the response body as JSON; raises with the body when it is not JSON.
-- @return the decoded value
function Response:json()
  local v, err = cjson.decode(self.body or "")
  if v == nil then
    error(fmt("response body is not JSON (%s): %s", tostring(err),
              sub(tostring(self.body), 1, 500)), 2)
  end
  return v
end

-- A reader over a string, with the Client's reading interface.
local StringReader = {}
StringReader.__index = StringReader
StringReader.buffered = Client.buffered
StringReader.take = Client.take
StringReader.receive_line = Client.receive_line
function StringReader.fill()
  return nil, "closed"
end

local function add_header(headers, name, value)
  local old = headers[name]
  if old == nil then
    headers[name] = value
  elseif type(old) == "table" then
    old[#old + 1] = value
  else
    headers[name] = { old, value }
  end
end

local function header_values(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

local function has_token(v, token)
  for _, s in ipairs(header_values(v)) do
    for t in lower(s):gmatch("[^,%s]+") do
      if t == token then return true end
    end
  end
  return false
end

local function body_sink(discard)
  local sink = { parts = not discard and {} or nil, length = 0 }
  function sink.add(s)
    sink.length = sink.length + #s
    if sink.parts then
      sink.parts[#sink.parts + 1] = s
    end
  end
  return sink
end

local function read_exact(r, n, sink, deadline)
  while n > 0 do
    local s, err = r:take(min(n, READ_SIZE), deadline)
    if not s then
      return nil, err
    end
    sink.add(s)
    n = n - #s
  end
  return true
end

local function read_chunked(r, sink, deadline)
  while true do
    local line, err = r:receive_line(max(0, deadline - _M.now()))
    if not line then
      return nil, err
    end
    local size = tonumber(match(line, "^%s*(%x+)") or "", 16)
    if not size then
      return nil, "bad chunk size line: " .. line
    end
    if size == 0 then
      local trailers = {}
      while true do
        line, err = r:receive_line(max(0, deadline - _M.now()))
        if not line then
          return nil, err
        end
        if line == "" then
          return true, trailers
        end
        local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if name then
          add_header(trailers, lower(name), value)
        end
      end
    end
    local ok
    ok, err = read_exact(r, size, sink, deadline)
    if not ok then
      return nil, err
    end
    line, err = r:receive_line(max(0, deadline - _M.now()))
    if line ~= "" then
      return nil, err or "chunk data not followed by CRLF"
    end
  end
end

-- Reads one response (or one interim 1xx response when `opts.interim` is "return").
-- Returns the response; or nil, an error and the partial response.
local function read_response(r, opts)
  opts = opts or {}
  local deadline = _M.now() + (opts.timeout or 5)
  local interim = {}
  while true do
    local line, err = r:receive_line(max(0, deadline - _M.now()))
    if not line then
      return nil, err
    end
    local version, status, reason = match(line, "^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
    if not version then
      return nil, "bad status line: " .. line
    end
    local res = setmetatable({ status = tonumber(status), reason = reason, version = version,
                               headers = {}, raw_headers = {} }, Response)
    while true do
      line, err = r:receive_line(max(0, deadline - _M.now()))
      if not line then
        return nil, err, res
      end
      if line == "" then
        break
      end
      local name, value = match(line, "^([^:]+):[ \t]*(.-)[ \t]*$")
      if not name then
        return nil, "bad header line: " .. line, res
      end
      res.raw_headers[#res.raw_headers + 1] = { name, value }
      add_header(res.headers, lower(name), value)
    end
    local s = res.status
    if s >= 100 and s < 200 and s ~= 101 and opts.interim ~= "return" then
      interim[#interim + 1] = res
    else
      res.interim = interim
      local sink = body_sink(opts.discard_body)
      local ok, trailers = true, nil
      local h = res.headers
      if opts.method == "HEAD" or s < 200 or s == 204 or s == 304 then
        res.framing = "none"
      elseif h["transfer-encoding"] and has_token(h["transfer-encoding"], "chunked") then
        res.framing = "chunked"
        ok, trailers = read_chunked(r, sink, deadline)
        if ok then
          res.trailers = trailers
        else
          err = trailers
        end
      elseif h["content-length"] then
        res.framing = "content-length"
        local n = tonumber(header_values(h["content-length"])[1])
        if not n then
          return nil, "bad content-length", res
        end
        ok, err = read_exact(r, n, sink, deadline)
      else
        res.framing = "close"
        while true do
          local piece, e = r:take(READ_SIZE, deadline)
          if not piece then
            if e ~= "closed" and e ~= "reset" then
              ok, err = false, e
            end
            break
          end
          sink.add(piece)
        end
      end
      res.body = sink.parts and concat(sink.parts) or nil
      res.body_length = sink.length
      if not ok then
        res.incomplete = true
        return nil, err, res
      end
      return res
    end
  end
end

--- Reads one response from the connection (1xx interim responses are collected in
-- `res.interim`, except 101 which is final).
-- @tparam[opt] table opts `method` (the request's; "HEAD" means no body), `timeout`
-- (seconds for the whole response, default 5), `discard_body` (count, do not keep)
-- @return the response (see `request()`), or nil, an error and the partial response
function Client:read_response(opts)
  opts = opts or {}
  if not opts.timeout then
    opts.timeout = self.timeout
  end
  return read_response(self, opts)
end

--- Reads one WebSocket frame (see moongate.spec.upstream.decode_frame for its fields).
-- @tparam[opt] number timeout seconds
-- @return the frame, or nil and an error message
function Client:receive_frame(timeout)
  local decode = require("moongate.spec.upstream").decode_frame
  local deadline = _M.now() + (timeout or self.timeout)
  while true do
    local frame, pos = decode(self.buf, self.pos)
    if frame then
      self.pos = pos
      return frame
    elseif pos then
      return nil, pos
    end
    local ok, err = self:fill(deadline)
    if not ok then
      return nil, err
    end
  end
end

--- Parses raw bytes holding zero or more HTTP responses (pipelined answers, say).
-- Handles Content-Length, chunked and read-until-close bodies; 1xx responses are entries of
-- their own. A truncated last response is returned with `incomplete = true`.
-- @tparam string raw
-- @tparam[opt] table opts `method` ("HEAD": no bodies)
-- @return a list of `{ status, reason, version, headers, raw_headers, body, body_length,
-- framing, trailers }` (with `:json()`), and the bytes left unparsed (garbage) if any
function _M.parse_response(raw, opts)
  opts = opts or {}
  local r = setmetatable({ buf = raw, pos = 1 }, StringReader)
  local list = {}
  while r:buffered() > 0 do
    local start = r.pos
    local res, _, partial = read_response(r, { method = opts.method, interim = "return",
                                                timeout = 0 })
    if res then
      list[#list + 1] = res
    else
      if partial and partial.incomplete then
        list[#list + 1] = partial
      else
        return list, sub(raw, start)
      end
      break
    end
  end
  return list
end

--------------------------------------------------------------------------------------------
-- HTTP requests
--------------------------------------------------------------------------------------------

local function url_encode(s)
  return (gsub(tostring(s), "[^%w%-%._~]", function(c) return fmt("%%%02X", byte(c)) end))
end

local function encode_query(q)
  if type(q) ~= "table" then
    return tostring(q)
  end
  local keys = {}
  for k in pairs(q) do
    keys[#keys + 1] = k
  end
  sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    for _, x in ipairs(type(v) == "table" and v or { v }) do
      parts[#parts + 1] = x == true and url_encode(k) or url_encode(k) .. "=" .. url_encode(x)
    end
  end
  return concat(parts, "&")
end

-- Builds the request head; returns it and the body (a string, a function or nil).
local function build_request(port, req)
  local method = req.method or "GET"
  local path = req.path or "/"
  if req.query then
    path = path .. (find(path, "?", 1, true) and "&" or "?") .. encode_query(req.query)
  end
  local body = req.body
  local names, given = {}, {}
  for name in pairs(req.headers or {}) do
    names[#names + 1] = name
    given[lower(name)] = true
  end
  sort(names)
  local lines = { fmt("%s %s HTTP/%s", method, path, req.http_version or "1.1") }
  if not given.host then
    lines[#lines + 1] = "Host: " .. (req.host or "127.0.0.1:" .. port)
  end
  for _, name in ipairs(names) do
    for _, v in ipairs(header_values(req.headers[name])) do
      lines[#lines + 1] = name .. ": " .. tostring(v)
    end
  end
  if type(body) == "table" then
    body = _M.json_encode(body)
    if not given["content-type"] then
      lines[#lines + 1] = "Content-Type: application/json"
    end
  end
  if type(body) == "string" then
    if not given["content-length"] and not given["transfer-encoding"] then
      lines[#lines + 1] = "Content-Length: " .. #body
    end
  elseif type(body) == "function" then
    if not given["content-length"] and not given["transfer-encoding"] then
      lines[#lines + 1] = "Transfer-Encoding: chunked"
      given.chunk_it = true
    end
  end
  if not given.connection and not req.keepalive then
    lines[#lines + 1] = "Connection: close"
  end
  return concat(lines, "\r\n") .. "\r\n\r\n", body, given.chunk_it
end

local function send_body(c, body, chunk_it)
  if type(body) == "string" then
    return c:send(body)
  end
  while true do
    local piece = body()
    if piece == nil then
      break
    end
    if #piece > 0 then
      local ok, err = c:send(chunk_it and fmt("%x\r\n", #piece) .. piece .. "\r\n" or piece)
      if not ok then
        return nil, err
      end
    end
  end
  if chunk_it then
    return c:send("0\r\n\r\n")
  end
  return true
end

--- Sends one HTTP/1.1 request over a new connection and reads the response.
-- @tparam number port
-- @tparam table req
--   `method` (default "GET"), `path` (default "/"), `query` (string or table),
--   `headers` (name -> value or list of values; sent in name order),
--   `body`: a string (Content-Length), a table (JSON, with Content-Type application/json)
--   or a function returning the next piece or nil at the end (chunked unless a
--   Content-Length header is given: then sent as is),
--   `host` (Host header, default "127.0.0.1:PORT"), `http_version` (default "1.1"),
--   `keepalive` (omit the default `Connection: close`), `timeout` (seconds per step,
--   default 10), `discard_body` (count the body, do not keep it: for huge responses),
--   `expect_wait` (seconds to wait for `100 Continue` when an Expect header is sent, 1)
-- @return the response `{ status, reason, version, headers (lower-case names -> value or
-- list), raw_headers (list of { name, value }), body, body_length, framing, trailers,
-- interim (1xx responses), json() }`, or nil, an error message and the partial response
function _M.request(port, req)
  req = req or {}
  local timeout = req.timeout or 10
  local c, err = _M.connect(port, { host = req.connect_host, timeout = timeout })
  if not c then
    return nil, err
  end
  local head, body, chunk_it = build_request(port, req)
  local ok
  ok, err = c:send(head)
  if ok and body ~= nil then
    local expect = false
    for name, v in pairs(req.headers or {}) do
      if lower(name) == "expect" and has_token(v, "100-continue") then
        expect = true
      end
    end
    if expect then
      -- Like curl: give the server a moment to answer 100 (or a final status) first.
      socket.select({ c.sock }, nil, req.expect_wait or 1)
    end
    ok, err = send_body(c, body, chunk_it)
    if not ok and c:buffered() == 0 and not socket.select({ c.sock }, nil, 0)[1] then
      c:close()
      return nil, "could not send the request body: " .. tostring(err)
    end
  elseif not ok then
    c:close()
    return nil, "could not send the request: " .. tostring(err)
  end
  local res, rerr, partial = c:read_response({ method = req.method, timeout = timeout,
                                               discard_body = req.discard_body })
  c:close()
  return res, rerr, partial
end

--- Sends raw bytes on a fresh connection and reads until the peer closes or the timeout.
-- @tparam number port
-- @param bytes a string, or a list of strings sent one by one (`opts.pause` apart)
-- @tparam[opt] table opts `timeout` (seconds, default 5), `pause` (seconds between pieces),
-- `half_close` (shut down the sending side after the last piece), `host`
-- @return everything received; whether the peer closed the connection (true for a close
-- and for a reset, false on timeout); and how it ended: "closed", "reset" or "timeout"
-- (or nil, false and an error when it could not connect)
function _M.raw(port, bytes, opts)
  opts = opts or {}
  local c, err = _M.connect(port, { host = opts.host, timeout = opts.timeout or 5 })
  if not c then
    return nil, false, err
  end
  local pieces = type(bytes) == "table" and bytes or { bytes }
  for i, piece in ipairs(pieces) do
    if i > 1 and opts.pause then
      _M.sleep(opts.pause)
    end
    if not c:send(piece) then
      break                                   -- the peer is gone: read what it said
    end
  end
  if opts.half_close then
    c:shutdown_send()
  end
  local data, how = c:receive_all(opts.timeout or 5)
  c:close()
  return data, how == "closed" or how == "reset", how
end

-- HTTP convenience methods shared by gateways and upstreams (anything with `.port`).
local function add_http_methods(class)
  --- Sends a request to this server; see `helpers.request()`.
  function class:request(req)
    return _M.request(self.port, req)
  end
  for _, method in ipairs({ "get", "head", "delete", "options" }) do
    class[method] = function(self, path, opts)
      local req = {}
      for k, v in pairs(opts or {}) do req[k] = v end
      req.method, req.path = method:upper(), path
      return _M.request(self.port, req)
    end
  end
  for _, method in ipairs({ "post", "put", "patch" }) do
    class[method] = function(self, path, body, opts)
      local req = {}
      for k, v in pairs(opts or {}) do req[k] = v end
      req.method, req.path, req.body = method:upper(), path, body
      return _M.request(self.port, req)
    end
  end
end

--------------------------------------------------------------------------------------------
-- Upstream
--------------------------------------------------------------------------------------------

local Upstream = {}
Upstream.__index = Upstream
add_http_methods(Upstream)

local function upstream_script()
  local path = package.searchpath and package.searchpath("moongate.spec.upstream",
                                                         package.path)
  if path then
    return path
  end
  local here = match(debug.getinfo(1, "S").source, "^@(.*)/[^/]*$") or "."
  return here .. "/upstream.lua"
end

--- Starts an upstream (moongate.spec.upstream) in a child process on a free port.
-- @tparam[opt] table opts `port` (default: a free one), `host` (default "127.0.0.1"),
-- `mode` (default mode for requests without X-Upstream-Mode, e.g. "status:503")
-- @return an upstream: `.port`, `.host`, `.url` ("http://127.0.0.1:PORT"), `.pid`,
-- `:stop()`, `:requests()`, `:last_request()`, `:count()`, `:clear()`, `:set_mode()`, and
-- the HTTP methods `:request()`, `:get()`, `:post()`, ... Raises if it cannot start.
function _M.upstream(opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local prefix = make_prefix("upstream")
  local cmd = fmt("exec %s %s --port %d --host %s", os.getenv("MOONGATE_LUAJIT") or "luajit",
                  shell_quote(upstream_script()), opts.port or 0, shell_quote(host))
  if opts.mode then
    cmd = cmd .. " --mode " .. shell_quote(opts.mode)
  end
  local proc = spawn(cmd, prefix)
  local up = setmetatable({ proc = proc, pid = proc.pid, host = host, prefix = prefix },
                          Upstream)
  tracked[#tracked + 1] = up
  local deadline = _M.now() + START_TIMEOUT
  while _M.now() < deadline do
    local port = tonumber(match(read_file(proc.out) or "", "listening on (%d+)"))
    if port then
      up.port = port
      up.url = fmt("http://%s:%d", host == "0.0.0.0" and "127.0.0.1" or host, port)
      return up
    end
    if not proc_running(proc) then
      break
    end
    _M.sleep(0.02)
  end
  up:stop()
  error("upstream did not start: " .. (read_file(proc.err) or ""), 2)
end

--- Stops the upstream (SIGTERM, then SIGKILL after 5 s).
function Upstream:stop()
  terminate({ self.proc }, nil, 5)
end

local function control(up, method, path, body)
  -- an upstream bound to another loopback address (e.g. 127.0.0.2) is reached there
  local host = up.host ~= "0.0.0.0" and up.host or nil
  local res, err = _M.request(up.port, { method = method, path = path, body = body,
                                         connect_host = host })
  if not res then
    error(fmt("upstream %s %s failed: %s", method, path, tostring(err)), 3)
  end
  if res.status >= 300 then
    error(fmt("upstream %s %s answered %d: %s", method, path, res.status, res.body), 3)
  end
  return res
end

--- The last 100 requests the upstream received, oldest first (the echo objects).
-- @treturn table
function Upstream:requests()
  return control(self, "GET", "/_upstream/requests"):json()
end

--- The last request the upstream received, or nil.
-- @treturn table|nil
function Upstream:last_request()
  local list = self:requests()
  return list[#list]
end

--- How many requests the upstream received (control requests excluded).
-- @treturn number
function Upstream:count()
  return control(self, "GET", "/_upstream/count"):json().count
end

--- Forgets the recorded requests and resets the count.
function Upstream:clear()
  control(self, "DELETE", "/_upstream/requests")
end

--- Sets (or with nil clears) the mode of requests without X-Upstream-Mode.
-- @tparam string|nil mode e.g. "status:503" or "delay:100, status:201"
function Upstream:set_mode(mode)
  control(self, "PUT", "/_upstream/mode", mode or "")
end

--------------------------------------------------------------------------------------------
-- Any other server a spec needs (nginx as a TLS backend, an OCSP responder, a DNS server)
--------------------------------------------------------------------------------------------

--- Starts `cmd` (a shell command line; `exec` is prepended unless it starts with one, so the
-- pid is the server's own) in the background, tracked like every process started here:
-- stopped when this Lua process goes away even if the spec forgets. stdout and stderr go to
-- files in a fresh prefix directory.
-- @tparam string cmd e.g. "openssl ocsp -index idx.txt -port 9000 ..."
-- @tparam[opt] table opts `ready` (a Lua pattern awaited in stdout or stderr, or a function
-- (p) returning truthy once the server is up, e.g. a line in p.stderr() — not necessarily a
-- probe connection: some servers, `openssl ocsp` among them, spin on a connection closed
-- without a request), `timeout` (seconds to wait for `ready`, default 10), `dir` (run it in
-- this directory)
-- @return a process: `.pid`, `.prefix`, `stop()` (SIGTERM, then SIGKILL after 5 s), `kill()`
-- (SIGKILL at once), `running()`, `exit_code()`, `stdout()`, `stderr()`, `output()` (both);
-- plain functions, so `p.stop()` and `p:stop()` both work. Raises, with the output, if the
-- process exits or is not ready in time.
function _M.process(cmd, opts)
  opts = opts or {}
  local p = { prefix = make_prefix("process") }
  local line = match(cmd, "^%s*exec%s") and cmd or "exec " .. cmd
  if opts.dir then line = "cd " .. shell_quote(opts.dir) .. " && " .. line end
  p.proc = spawn(line, p.prefix)
  p.pid = p.proc.pid
  tracked[#tracked + 1] = p
  function p.stop() terminate({ p.proc }, nil, 5) end
  function p.kill()
    signal_pid(p.proc.pid, "KILL")
    proc_wait(p.proc, 5)
  end
  function p.running() return proc_running(p.proc) end
  function p.exit_code() return proc_exit_code(p.proc) end
  function p.stdout() return read_file(p.proc.out) or "" end
  function p.stderr() return read_file(p.proc.err) or "" end
  function p.output() return p.stdout() .. p.stderr() end
  if opts.ready == nil then return p end
  local deadline = _M.now() + (opts.timeout or START_TIMEOUT)
  while _M.now() < deadline do
    local ok
    if type(opts.ready) == "function" then
      ok = opts.ready(p)
    else
      ok = find(p.output(), opts.ready)
    end
    if ok then return p end
    if not proc_running(p.proc) then break end
    _M.sleep(0.02)
  end
  p.stop()
  error(fmt("process did not start: %s\n%s", cmd, p.output()), 2)
end

--------------------------------------------------------------------------------------------
-- Redis
--------------------------------------------------------------------------------------------

--- Starts a real `redis-server` ($MOONGATE_REDIS_SERVER, default "redis-server") on a free
-- 127.0.0.1 port, keeping nothing on disk (`--save "" --appendonly no`, its dir a prefix).
-- Like every process started here it is stopped when this Lua process goes away.
-- @tparam[opt] table opts `args` (more command-line arguments, one string, e.g.
-- "--requirepass secret"), `port` (default: a free one)
-- @return a server: `.port`, `.pid`, `.prefix`, `.stop()` (SIGTERM, then SIGKILL),
-- `.kill()` (SIGKILL: an outage, no goodbye to clients), `.restart()` (a new, empty server
-- on the same port with the same arguments). Raises if it does not answer PING within 10 s.
function _M.redis_server(opts)
  opts = opts or {}
  local bin = os.getenv("MOONGATE_REDIS_SERVER") or "redis-server"
  local srv = { port = opts.port or _M.get_free_port(), prefix = make_prefix("redis") }
  tracked[#tracked + 1] = srv

  local function answers()
    local c = socket.tcp4()
    c:settimeout(1)
    if c:connect("127.0.0.1", srv.port) ~= 1 then
      c:close()
      return false
    end
    c:send("PING\r\n")
    local line = c:receive("*l")
    c:close()
    return line == "+PONG" or (line or ""):match("^%-NOAUTH") ~= nil
  end

  local function start()
    local cmd = fmt("exec %s --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s %s",
                    shell_quote(bin), srv.port, shell_quote(srv.prefix), opts.args or "")
    srv.proc = spawn(cmd, srv.prefix)
    srv.pid = srv.proc.pid
    local deadline = _M.now() + START_TIMEOUT
    while _M.now() < deadline do
      if answers() then return end
      if not proc_running(srv.proc) then break end
      _M.sleep(0.02)
    end
    terminate({ srv.proc }, nil, 2)
    error(fmt("redis-server did not start on port %d: %s%s", srv.port,
              read_file(srv.proc.out) or "", read_file(srv.proc.err) or ""), 3)
  end

  function srv.stop()
    terminate({ srv.proc }, nil, 5)
  end

  function srv.kill()
    signal_pid(srv.proc.pid, "KILL")
    proc_wait(srv.proc, 5)
  end

  function srv.restart()
    if proc_running(srv.proc) then srv.stop() end
    start()
  end

  start()
  return srv
end

--------------------------------------------------------------------------------------------
-- nginx (a real HTTPS backend)
--------------------------------------------------------------------------------------------

--- Starts a real nginx ($MOONGATE_NGINX, default "/usr/sbin/nginx") as a backend: one
-- process (`master_process off`, so its pid is the server), logs and temporary files in a
-- fresh prefix. `http_body` is the inside of the `http {}` block; each `%PORT%`, `%PORT_B%`,
-- ... in it becomes a free 127.0.0.1 port (the same tag, the same port), and `%PREFIX%` the
-- prefix directory. Like every process started here it is stopped when this Lua process
-- goes away.
--   local ng = helpers.nginx([[server { listen 127.0.0.1:%PORT% ssl; ... }]])
-- @tparam string http_body
-- @return a server: `.port` (for %PORT%), `.ports` (tag -> port, e.g. ports.PORT_B), `.pid`,
-- `.prefix`, `.stop()`, `.error_log()`, `.access_log()` (of `access_log %PREFIX%/access.log`).
-- Raises when it does not accept on every port within 10 s.
function _M.nginx(http_body)
  local bin = os.getenv("MOONGATE_NGINX") or "/usr/sbin/nginx"
  local srv = { prefix = make_prefix("nginx"), ports = {} }
  tracked[#tracked + 1] = srv
  local body = gsub(http_body, "%%(PORT[%w_]*)%%", function(tag)
    srv.ports[tag] = srv.ports[tag] or _M.get_free_port()
    return tostring(srv.ports[tag])
  end)
  body = gsub(body, "%%PREFIX%%", function() return srv.prefix end)
  srv.port = srv.ports.PORT
  local p = srv.prefix
  assert(os.execute("mkdir -p " .. shell_quote(p .. "/tmp")))
  write_file(p .. "/nginx.conf", fmt([[
error_log %s/logs/error.log info;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  default_type text/plain;
%s
}
]], p, p, p, p, p, p, body))
  local cmd = fmt("exec %s -p %s -c %s -e %s -g %s", shell_quote(bin), shell_quote(p .. "/"),
                  shell_quote(p .. "/nginx.conf"), shell_quote(p .. "/logs/error.log"),
                  shell_quote(fmt("daemon off; master_process off; pid %s/nginx.pid;", p)))
  srv.proc = spawn(cmd, p)
  srv.pid = srv.proc.pid

  function srv.stop()
    terminate({ srv.proc }, nil, 5)
  end

  function srv.error_log()
    return read_file(p .. "/logs/error.log") or ""
  end

  function srv.access_log()
    return read_file(p .. "/access.log") or ""
  end

  local deadline = _M.now() + START_TIMEOUT
  while _M.now() < deadline do
    local all = true
    for _, port in pairs(srv.ports) do
      all = all and port_accepts(port)
    end
    if all then return srv end
    if not proc_running(srv.proc) then break end
    _M.sleep(0.02)
  end
  srv.stop()
  error(fmt("nginx did not start: %s%s", read_file(srv.proc.err) or "", srv.error_log()), 2)
end

--------------------------------------------------------------------------------------------
-- Gateway
--------------------------------------------------------------------------------------------

local Gateway = {}
Gateway.__index = Gateway
add_http_methods(Gateway)

local function listen_ports(v)
  local entries = {}
  if type(v) == "string" then
    for e in v:gmatch("[^,]+") do entries[#entries + 1] = e end
  elseif type(v) == "table" then
    entries = v
  end
  local plain, ssl
  for _, e in ipairs(entries) do
    local addr, flags = match(tostring(e), "^%s*(%S+)%s*(.-)%s*$")
    local port = tonumber(match(addr or "", ":(%d+)$"))
    if port then
      if has_token(flags, "ssl") then
        ssl = ssl or port
      else
        plain = plain or port
      end
    end
  end
  return plain, ssl
end

local function file_setting(v)
  if type(v) == "string" and v ~= "off" and v ~= "stdout" and v ~= "stderr" then
    return v
  end
end

-- Writes the config file; sets .conf, .port, .ssl_port, .admin_port and the log paths.
function Gateway:write_conf(conf)
  if type(conf) == "string" then
    if not self.port then
      self.port = _M.get_free_port()
    end
    local text = gsub(conf, "{{(%w+)}}", { port = tostring(self.port), prefix = self.prefix })
    self.conf, self.conf_file = nil, self.prefix .. "/moongate.yaml"
    self.error_log_path = self.prefix .. "/logs/error.log"
    self.access_log_path = self.prefix .. "/logs/access.jsonl"
    write_file(self.conf_file, text)
    return
  end
  local merged = {
    worker_processes = 1,
    master_process = true,
    access_log = self.prefix .. "/logs/access.jsonl",
    error_log = self.prefix .. "/logs/error.log",
    pid_file = self.prefix .. "/logs/moongate.pid",
  }
  for k, v in pairs(conf or {}) do
    merged[k] = v
  end
  if merged.proxy_listen == nil then
    self.port = self.default_port or _M.get_free_port()
    self.default_port = self.port
    merged.proxy_listen = _M.array({ "127.0.0.1:" .. self.port })
  else
    self.port, self.ssl_port = listen_ports(merged.proxy_listen)
  end
  self.admin_port = listen_ports(merged.admin_listen)
  self.url = self.port and "http://127.0.0.1:" .. self.port or nil
  self.error_log_path = file_setting(merged.error_log)
  self.access_log_path = file_setting(merged.access_log)
  self.conf, self.conf_file = merged, self.prefix .. "/moongate.json"
  write_file(self.conf_file, _M.json_encode(merged) .. "\n")
end

local function gateway_bin(opts)
  local bin = opts and opts.bin or os.getenv("MOONGATE_BIN") or DEFAULT_BIN
  local f = io.open(bin, "rb")
  if not f then
    error("moongate binary not found at " .. bin .. " (build it, or set MOONGATE_BIN)", 3)
  end
  f:close()
  return bin
end

-- `env` with the given variables; with `default_signals`, every signal disposition is reset
-- to the default first: a background job of a non-interactive sh inherits SIGINT and SIGQUIT
-- ignored, and this Lua process ignores SIGPIPE (luasocket), none of which a gateway started
-- by an init system would have.
local function env_prefix(env, default_signals)
  local parts = {}
  for k, v in pairs(env or {}) do
    parts[#parts + 1] = k .. "=" .. shell_quote(v)
  end
  sort(parts)
  if default_signals then
    table.insert(parts, 1, "--default-signal")
  end
  return #parts > 0 and "env " .. concat(parts, " ") .. " " or ""
end

--- Starts the gateway: `$MOONGATE_BIN run -c FILE` in the background.
-- The config is the given table over these defaults, written as JSON in a fresh prefix
-- directory (`gw.prefix`, under /tmp): `proxy_listen` one free port on 127.0.0.1,
-- `worker_processes` 1, `master_process` true, `access_log` PREFIX/logs/access.jsonl,
-- `error_log` PREFIX/logs/error.log, `pid_file` PREFIX/logs/moongate.pid. Mark empty arrays
-- with `helpers.empty_array`. A string is YAML text written as is, after replacing
-- `{{port}}` (a free port, `gw.port`) and `{{prefix}}`.
-- Waits until the proxy port accepts connections; raises with the error log and stderr if
-- the gateway exits first or is not up within `opts.timeout` seconds.
-- @tparam table|string conf settings and entities
-- @tparam[opt] table opts `timeout` (default 10), `env` (extra environment variables),
-- `bin` (default $MOONGATE_BIN or ./build/moongate), `args` (extra arguments after `run`),
-- `wait` (false: return at once, without waiting for the port)
-- @return the gateway: `.port` (first non-ssl proxy_listen port), `.ssl_port`,
-- `.admin_port`, `.url`, `.prefix`, `.pid`, `.conf_file`, `.conf`, and `:stop()`,
-- `:kill()`, `:reload()`, `:running()`, `:wait_exit()`, `:error_log()`, `:stderr()`,
-- `:access_log_lines()`, `:worker_pids()`, `:request()`, `:get()`, `:post()`, ...
function _M.start(conf, opts)
  opts = opts or {}
  local bin = gateway_bin(opts)
  local gw = setmetatable({ prefix = make_prefix("gw"), bin = bin }, Gateway)
  gw:write_conf(conf)
  local cmd = fmt("exec %s%s run -c %s%s", env_prefix(opts.env, true), shell_quote(bin),
                  shell_quote(gw.conf_file), opts.args and " " .. opts.args or "")
  gw.proc = spawn(cmd, gw.prefix)
  gw.pid = gw.proc.pid
  tracked[#tracked + 1] = gw
  if opts.wait == false then
    return gw
  end
  local timeout = opts.timeout or START_TIMEOUT
  local deadline, why = _M.now() + timeout, nil
  local wait_port = gw.port or gw.ssl_port or gw.admin_port
  while true do
    if not gw:running() then
      why = "exited with status " .. tostring(proc_wait(gw.proc, 1))
      break
    end
    if wait_port and port_accepts(wait_port) then
      return gw
    end
    if _M.now() > deadline then
      why = fmt("did not accept on port %s within %g s", tostring(wait_port), timeout)
      gw:stop(2)
      break
    end
    _M.sleep(0.05)
  end
  error(fmt("moongate %s\n--- config %s\n%s\n--- error log\n%s\n--- stderr\n%s", why,
            gw.conf_file, read_file(gw.conf_file) or "", gw:error_log(), gw:stderr()), 2)
end

--- Whether the master process still runs.
-- @treturn boolean
function Gateway:running()
  return proc_running(self.proc)
end

--- Sends a signal to the master process.
-- @param[opt="TERM"] sig a name ("HUP", "SIGQUIT") or a number
-- @treturn boolean whether it was delivered
function Gateway:kill(sig)
  return signal_pid(self.pid, sig or "TERM")
end

--- Waits for the master to exit.
-- @tparam[opt=10] number timeout seconds
-- @return its exit status (128 + N when killed by signal N), or nil if it still runs
function Gateway:wait_exit(timeout)
  return proc_wait(self.proc, timeout or STOP_TIMEOUT)
end

--- Stops the gateway: SIGTERM, up to `timeout` seconds for the master to exit, then
-- SIGKILL; workers that outlive their master are killed too.
-- @tparam[opt=10] number timeout seconds
-- @return the master's exit status
function Gateway:stop(timeout)
  local workers = self:running() and self:worker_pids() or {}
  terminate({ self.proc }, workers, timeout or STOP_TIMEOUT)
  return proc_exit_code(self.proc)
end

--- Rewrites the config file and sends SIGHUP to the master. The reload itself is
-- asynchronous: check its effect with `helpers.eventually()`.
-- @tparam[opt] table|string conf the new config (same defaults and port as `start()`);
-- nil: reload the current file
-- @treturn boolean whether the signal was delivered
function Gateway:reload(conf)
  if conf ~= nil then
    self:write_conf(conf)
  end
  return self:kill("HUP")
end

--- The error log's contents ("" when there is none yet).
-- @treturn string
function Gateway:error_log()
  return self.error_log_path and read_file(self.error_log_path) or ""
end

--- What the gateway wrote on stderr (and stdout).
-- @treturn string
function Gateway:stderr()
  return (read_file(self.proc.err) or "") .. (read_file(self.proc.out) or "")
end

--- The access log, one decoded JSON object per line; raises on a line that is not JSON.
-- @treturn table
function Gateway:access_log_lines()
  local data = self.access_log_path and read_file(self.access_log_path) or ""
  local list = {}
  for i, line in ipairs(split_lines(data)) do
    if line ~= "" then
      local v, err = cjson.decode(line)
      if v == nil then
        error(fmt("access log line %d is not JSON (%s): %s", i, err, line), 2)
      end
      list[#list + 1] = v
    end
  end
  return list
end

--- The access log entry of the request for `path` (the first one), waiting up to `timeout`
-- seconds (default 3) for the worker's buffered batch to be written.
-- @treturn table the decoded line
function Gateway:access_log_entry(path, timeout)
  return _M.eventually(function()
    for _, line in ipairs(self:access_log_lines()) do
      if line.path == path then return line end
    end
    error("no access log line for " .. path .. " yet")
  end, timeout or 3)
end

--- The pids of the master's live children (the workers), sorted.
-- @treturn table
function Gateway:worker_pids()
  return child_pids(self.pid)
end

--------------------------------------------------------------------------------------------
-- moongate check
--------------------------------------------------------------------------------------------

--- Runs `moongate check -c FILE` on a config, written as is (no defaults added): JSON for a
-- table, YAML text for a string.
-- @tparam table|string conf
-- @tparam[opt] table opts `bin`, `env`
-- @return the exit code and the output lines (stdout and stderr)
function _M.check(conf, opts)
  opts = opts or {}
  local bin = gateway_bin(opts)
  local dir = make_prefix("check")
  local file = dir .. (type(conf) == "string" and "/moongate.yaml" or "/moongate.json")
  write_file(file, type(conf) == "string" and conf or _M.json_encode(conf) .. "\n")
  local out, rc = run(fmt("%s%s check -c %s 2>&1 </dev/null", env_prefix(opts.env),
                          shell_quote(bin), shell_quote(file)))
  return rc, split_lines(out)
end

--------------------------------------------------------------------------------------------
-- Waiting
--------------------------------------------------------------------------------------------

local function pack(...)
  return { n = select("#", ...), ... }
end

--- Calls `fn` until it returns without raising, then returns what it returned; after
-- `timeout` seconds raises fn's last error (assertion failures keep their message).
-- @tparam function fn
-- @tparam[opt=5] number timeout seconds
-- @tparam[opt=0.05] number interval seconds between attempts
function _M.eventually(fn, timeout, interval)
  local deadline = _M.now() + (timeout or 5)
  while true do
    local res = pack(pcall(fn))
    if res[1] then
      return unpack(res, 2, res.n)
    end
    if _M.now() >= deadline then
      local err = res[2]
      if type(err) == "string" then
        err = fmt("eventually: still failing after %g s: %s", timeout or 5, err)
      end
      error(err, 0)
    end
    _M.sleep(interval or 0.05)
  end
end

return _M
