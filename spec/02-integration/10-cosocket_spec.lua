-- Cosockets (DESIGN.md §4: moongate.socket.tcp): OpenResty's ngx.socket.tcp API in the rewrite
-- and access phases. A test plugin (spec/fixtures/plugins/moongate/plugins/cosock-client)
-- talks to real peers — the helpers' echo upstream over HTTP, and spec/fixtures/tcp_server.lua,
-- a raw TCP/TLS peer scripted one command per line — and answers with what it got. Covered:
-- lines, sizes, "*a", receiveuntil, refused and timed-out connects, read timeouts that leave
-- the socket usable, peers closing mid-read, the keepalive pool (reuse, idle timeout, a peer
-- closing an idle connection, unread data), name resolution, waits that do not block the
-- worker, clients leaving mid-wait, garbage-collected sockets, phase misuse and TLS.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local fmt = string.format

local PWD = os.getenv("PWD")
local PLUGIN_PATH = PWD .. "/spec/fixtures/plugins/?.lua;;"
local SERVER = PWD .. "/spec/fixtures/tcp_server.lua"
local OWN_PID = tonumber((helpers.read_file("/proc/self/stat") or ""):match("^(%d+)"))

-- A raw TCP (or TLS) peer in a child process; it exits by itself once this process is gone.
local function tcp_server(args)
  local out = os.tmpname()
  local cmd = fmt("exec %s %s --port 0 --parent %d %s >%s 2>&1 </dev/null",
                  os.getenv("MOONGATE_LUAJIT") or "luajit", helpers.shell_quote(SERVER),
                  OWN_PID, args or "", helpers.shell_quote(out))
  local pid_text = helpers.run("(" .. cmd .. ") & echo $!")
  local pid = assert(tonumber(pid_text:match("(%d+)")), "could not start " .. SERVER)
  local port
  helpers.eventually(function()
    port = assert(tonumber((helpers.read_file(out) or ""):match("listening on (%d+)")),
                  "tcp_server did not start: " .. (helpers.read_file(out) or ""))
  end, 5, 0.02)
  local srv = { pid = pid, port = port, log = out }
  -- "accepted=N open=M" as numbers, asked over a connection of its own (counted in both)
  function srv.stats()
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(2)
    assert(c:send("stats\nclose\n"))   -- closed at once: the next stats won't count it
    local line = assert(c:receive())
    c:close()
    local a, o = line:match("accepted=(%d+) open=(%d+)")
    return tonumber(a), tonumber(o) - 1
  end
  function srv.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.remove(out)
  end
  return srv
end

-- A TCP port on 127.0.0.1 whose SYNs are dropped (a listener with a full backlog), as in
-- 04-upstream_failures_spec.lua: connects to it neither succeed nor fail.
local function blackhole()
  local l = assert(socket.tcp4())
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fill = assert(socket.tcp4())
  fill:settimeout(2)
  assert(fill:connect("127.0.0.1", port))
  local probe = assert(socket.tcp4())
  probe:settimeout(0.3)
  local ok, err = probe:connect("127.0.0.1", port)
  probe:close()
  return { port = tonumber(port), socks = { fill, l }, works = not ok and err == "timeout" }
end

local function settings(up, extra)
  local t = {
    lua_package_path = PLUGIN_PATH,
    plugins = { "bundled", "cosock-client", "cosock-hf" },
    services = {
      { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
      { name = "cosock", url = up.url, plugins = { { name = "cosock-client" } },
        routes = { { name = "cosock", paths = { "/cosock" } } } },
      { name = "hf", url = up.url, plugins = { { name = "cosock-hf" } },
        routes = { { name = "hf", paths = { "/hf" } } } },
    },
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local function call(gw, action, port, headers)
  local h = { ["X-Action"] = action, ["X-Port"] = tostring(port) }
  for k, v in pairs(headers or {}) do h[k] = v end
  local res = assert(gw:get("/cosock", { headers = h, timeout = 10 }))
  assert.equal(200, res.status, res.body)
  return assert(cjson.decode(res.body), res.body)
end

describe("cosockets", function()
  local up, gw, srv

  lazy_setup(function()
    up = helpers.upstream()
    srv = tcp_server()
    gw = helpers.start(settings(up))
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if srv then srv.stop() end
  end)

  describe("reading and writing", function()
    it("speaks HTTP to a peer: a status line, header lines and a sized body", function()
      local r = call(gw, "http", up.port)
      assert.equal("HTTP/1.1 200 OK", r.status)
      assert.equal("/cosock", r.path)
      assert.equal(0, r.reused)
      assert.is_true(r.sent > 30)
    end)

    it("reads until the peer closes with *a, then reports closed", function()
      local r = call(gw, "all", up.port)
      assert.is_nil(r.err)
      assert.equal("HTTP/1.1 200 OK", r.head)
      assert.is_true(r.tail_is_json)
      assert.same({ cjson.null, "closed", "" }, r.again)
    end)

    it("reads lines (LF or CRLF, every CR dropped), sizes, receiveany, and a line longer "
       .. "than the read buffer", function()
      local r = call(gw, "lines", srv.port)
      assert.same({ "one", "two", "three", "0123", "456789", "abc", 40000 }, r.lines)
    end)

    it("reads with receiveuntil: sized pieces, whole, inclusive, a pattern split across "
       .. "reads", function()
      local r = call(gw, "until", srv.port)
      assert.same({ "hell", "o, w", "orld", "! -a", "gent", "zh" }, r.chunks)
      assert.equal(" blah blah", r.before)
      assert.equal("first", r.first)
      assert.equal("second|", r.incl)
      assert.equal("abc", r.split)
      assert.equal("rest", r.rest)
    end)
  end)

  describe("failures", function()
    it("returns nil, \"connection refused\" when nothing listens", function()
      local r = call(gw, "refused", helpers.get_free_port())
      assert.is_nil(r.ok)
      assert.equal("connection refused", r.err)
      assert.same({ cjson.null, "closed" }, r.after)
    end)

    it("times out a connect that gets no answer", function()
      local bh = blackhole()
      finally(function() for _, s in ipairs(bh.socks) do s:close() end end)
      if not bh.works then
        pending("this system answers SYNs beyond a full backlog")
        return
      end
      local r = call(gw, "connect_timeout", bh.port, { ["X-Timeout"] = "300" })
      assert.is_false(r.ok)
      assert.equal("timeout", r.err)
      assert.is_true(r.elapsed >= 0.25, "elapsed " .. r.elapsed)   -- never before the timeout
    end)

    it("times out a read and keeps the socket usable for the next one", function()
      local r = call(gw, "read_timeout", srv.port)
      assert.same({ cjson.null, "timeout", "" }, r.first)
      assert.is_true(r.elapsed >= 0.15, "elapsed " .. r.elapsed)   -- never before the timeout
      assert.same({ "late" }, r.second)
    end)

    it("times out a send the peer does not read, and closes the connection", function()
      local r = call(gw, "send_timeout", srv.port)
      assert.is_nil(r.bytes)
      assert.equal("timeout", r.err)
      assert.is_true(r.elapsed >= 0.25, "elapsed " .. r.elapsed)     -- never before the timeout
      assert.same({ cjson.null, "closed" }, r.after)
    end)

    it("returns nil, \"closed\" and the partial data when the peer closes mid-read", function()
      local r = call(gw, "closed", srv.port)
      assert.is_nil(r.data)
      assert.equal("closed", r.err)
      assert.equal("partial-data", r.partial)
      assert.same({ cjson.null, "closed", "" }, r.after)
      r = call(gw, "closed", srv.port, { ["X-Pattern"] = "*l" })
      assert.equal("closed", r.err)
      assert.equal("partial-data", r.partial)
    end)

    it("resolves names without blocking (localhost, from /etc/hosts), and reports names "
       .. "that do not resolve", function()
      local r = call(gw, "resolve", srv.port, { ["X-Host"] = "localhost" })
      assert.equal("resolved", r.line)
      r = call(gw, "resolve", srv.port, { ["X-Host"] = "no-such-host.invalid",
                                          ["X-Timeout"] = "3000" })
      assert.matches("^no%-such%-host%.invalid could not be resolved %(.+%)$", r.err)
    end)
  end)

  describe("keepalive pool", function()
    it("hands a pooled connection to the next connect: reused once, one connection at the "
       .. "peer", function()
      local h = { ["X-Keepalive"] = "1", ["X-Pool"] = "ka-http" }
      local r1 = call(gw, "http", up.port, h)
      assert.same({ 1 }, r1.keepalive)
      assert.equal(0, r1.reused)
      local r2 = call(gw, "http", up.port, h)
      assert.equal(1, r2.reused)
      assert.equal(r1.connection_id, r2.connection_id)
      assert.same({ 1 }, r2.keepalive)
    end)

    it("refuses to pool a connection with unread data, which stays usable", function()
      local r = call(gw, "unread", srv.port)
      assert.equal("a", r.a)
      assert.same({ cjson.null, "unread data in buffer" }, r.keepalive)
      assert.equal("b", r.b)
    end)

    it("drops a pooled connection the peer closed, and one idle past its timeout", function()
      local _, open0 = srv.stats()
      local r1 = call(gw, "raw_pool", srv.port, { ["X-Pool"] = "raw1" })
      assert.equal(0, r1.reused)
      assert.same({ 1 }, r1.keepalive)
      local r2 = call(gw, "raw_pool", srv.port, { ["X-Pool"] = "raw1",
                                                  ["X-Then"] = "sleep 150|close|" })
      assert.equal(1, r2.reused)
      local function accepted(stats) return stats:match("accepted=%d+") end
      assert.equal(accepted(r1.stats), accepted(r2.stats))  -- no new connection at the peer
      helpers.sleep(0.5)                             -- the peer closed it while pooled
      local r3 = call(gw, "raw_pool", srv.port, { ["X-Pool"] = "raw1", ["X-Idle"] = "700" })
      assert.equal(0, r3.reused)
      assert.not_equal(accepted(r1.stats), accepted(r3.stats))
      local _, open = srv.stats()
      assert.equal(open0 + 1, open)                  -- r3's, idle in the pool
      helpers.eventually(function()                  -- closed after its idle timeout
        local _, o = srv.stats()
        assert.equal(open0, o)
      end, 3)
      local r4 = call(gw, "raw_pool", srv.port, { ["X-Pool"] = "raw1" })
      assert.equal(0, r4.reused)
    end)
  end)

  describe("concurrency", function()
    it("serves other requests while many wait on a slow peer", function()
      local n, clients = 6, {}
      local count0 = up:count()
      for i = 1, n do
        local c = assert(helpers.connect(gw.port))
        assert(c:send(fmt("GET /cosock/%d HTTP/1.1\r\nHost: x\r\nX-Action: http\r\n"
                          .. "X-Port: %d\r\nX-Upstream-Mode: delay:2000\r\n"
                          .. "Connection: close\r\n\r\n", i, up.port)))
        clients[i] = c
      end
      -- every slow request reaches the peer while none is answered: they wait side by side
      -- (one at a time, the peer would hold the second until the first's 2 s were over)
      helpers.eventually(function() assert.equal(n, up:count() - count0) end, 5)
      local plain = assert(gw:get("/plain"))
      assert.equal(200, plain.status)
      for i = 1, n do -- and the plain route did not queue behind them
        clients[i]:fill(helpers.now() + 0.01)
        assert.equal(0, clients[i]:buffered(), "a slow request was answered before /plain")
      end
      for i = 1, n do
        local res = assert(clients[i]:read_response({ timeout = 10 }))
        clients[i]:close()
        assert.equal(200, res.status)
        assert.equal("HTTP/1.1 200 OK", res:json().status)
      end
    end)
  end)

  describe("life cycle", function()
    it("closes the socket of a request whose client leaves mid-wait, and keeps serving",
       function()
      local workers = gw:worker_pids()
      local _, open0 = srv.stats()
      local c = assert(helpers.connect(gw.port))
      assert(c:send(fmt("GET /cosock HTTP/1.1\r\nHost: x\r\nX-Action: hang\r\nX-Port: %d\r\n\r\n",
                        srv.port)))
      helpers.eventually(function()
        local _, o = srv.stats()
        assert.equal(open0 + 1, o)
      end, 3)
      c:close()
      helpers.eventually(function()
        local _, o = srv.stats()
        assert.equal(open0, o)
      end, 3)
      assert.equal(200, assert(gw:get("/plain")).status)
      assert.same(workers, gw:worker_pids())         -- no crash, no respawn
    end)

    it("closes a socket the plugin left open when the request ends, not at the next GC",
       function()
      local _, open0 = srv.stats()
      assert.equal("up", call(gw, "leak", srv.port).line)
      helpers.eventually(function()
        local _, o = srv.stats()
        assert.equal(open0, o)
      end, 3)
    end)

    it("closes it even when the plugin kept the object; using it later says \"closed\"",
       function()
      local _, open0 = srv.stats()
      assert.equal("kept", call(gw, "stash", srv.port).line)
      helpers.eventually(function()
        local _, o = srv.stats()
        assert.equal(open0, o)
      end, 3)
      assert.same({ err = "closed" }, call(gw, "stashed", 0))
    end)
  end)

  describe("timers", function()
    it("lets a timer's function (no request) use a cosocket", function()
      assert.is_true(call(gw, "timer", srv.port, { ["X-Key"] = "t1",
                                                   ["X-Host"] = "localhost" }).started)
      helpers.eventually(function()
        local r = call(gw, "timer_result", 0, { ["X-Key"] = "t1" })
        assert.same({ line = "from a timer" }, r)
      end, 3)
    end)
  end)

  describe("misuse", function()
    it("refuses a cosocket in header_filter", function()
      assert.equal(500, assert(gw:get("/hf")).status)
      helpers.eventually(function()
        assert.matches("moongate.socket.tcp is not allowed in the header_filter phase",
                       gw:error_log(), 1, true)
      end, 3)
    end)

    it("raises on bad arguments (a 500), unlike network failures", function()
      local res = assert(gw:get("/cosock", { headers = { ["X-Action"] = "misuse" } }))
      assert.equal(500, res.status)
      helpers.eventually(function()
        assert.matches("bad argument #1 to 'send'", gw:error_log(), 1, true)
      end, 3)
    end)
  end)
end)

describe("cosockets: TLS", function()
  local up, gw, trusted, untrusted, dir

  local function cert(name)
    local key, crt = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".crt"
    local out, rc = helpers.run(fmt("openssl req -x509 -newkey ec -pkeyopt "
      .. "ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s -days 2 -subj /CN=localhost "
      .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>&1", key, crt))
    assert(rc == 0, out)
    return crt, key
  end

  lazy_setup(function()
    dir = helpers.run("mktemp -d /tmp/moongate-spec.tls.XXXXXX"):match("%S+")
    local crt, key = cert("trusted")
    local crt2, key2 = cert("untrusted")
    trusted = tcp_server(fmt("--tls %s %s", crt, key))
    untrusted = tcp_server(fmt("--tls %s %s", crt2, key2))
    up = helpers.upstream()
    -- the system store is replaced by our CA for this gateway (OpenSSL reads SSL_CERT_FILE)
    -- the plugin is global here too, so its rewrite handler runs (Kong: rewrite is global)
    local conf = settings(up)
    conf.plugins = { "bundled", "cosock-client", "cosock-hf", { name = "cosock-client" } }
    gw = helpers.start(conf, { env = { SSL_CERT_FILE = crt } })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if trusted then trusted.stop() end
    if untrusted then untrusted.stop() end
    if dir and dir:match("^/tmp/moongate%-spec%.tls%.") then os.execute("rm -rf " .. dir) end
  end)

  it("does a verified handshake with SNI and talks over TLS", function()
    local r = call(gw, "tls", trusted.port, { ["X-SNI"] = "localhost", ["X-Verify"] = "1" })
    assert.is_nil(r.err)
    assert.equal("over tls", r.line)
    assert.equal("cdata", r.session)
  end)

  it("offers a saved session to a later handshake", function()
    local r = call(gw, "tls", trusted.port, { ["X-SNI"] = "localhost", ["X-Verify"] = "1",
                                              ["X-Resume"] = "1" })
    assert.same({ true, "resumed" }, r.resumed)
  end)

  it("works in the rewrite phase too", function()
    local res = assert(gw:get("/anything", { headers = { ["X-Rewrite-Action"] = "http",
      ["X-Host"] = "localhost", ["X-Port"] = tostring(up.port) } }))
    assert.equal(200, res.status)
    assert.equal("HTTP/1.1 200 OK", res:json().status)
  end)

  it("rejects a certificate for another name, or from an unknown issuer", function()
    local r = call(gw, "tls", trusted.port, { ["X-SNI"] = "other.example", ["X-Verify"] = "1" })
    assert.equal("certificate host mismatch", r.err)
    r = call(gw, "tls", untrusted.port, { ["X-SNI"] = "localhost", ["X-Verify"] = "1" })
    assert.matches("^%d+: .*self.signed", r.err)
  end)

  it("skips verification when not asked", function()
    local r = call(gw, "tls", untrusted.port, { ["X-SNI"] = "other.example" })
    assert.equal("over tls", r.line)
  end)

  it("pools TLS connections: the next connect reuses the session as is", function()
    local h = { ["X-SNI"] = "localhost", ["X-Verify"] = "1", ["X-Pool"] = "tls-pool",
                ["X-Keepalive"] = "1" }
    local r1 = call(gw, "tls", trusted.port, h)
    assert.equal(0, r1.reused)
    assert.same({ 1 }, r1.keepalive)
    local r2 = call(gw, "tls", trusted.port, h)
    assert.equal(1, r2.reused)
    assert.equal("over tls", r2.line)
  end)

  it("fails the handshake with a plain TCP peer", function()
    local r = call(gw, "tls", up.port, { ["X-Timeout"] = "2000" })
    assert.equal("handshake failed", r.err)
  end)
end)
