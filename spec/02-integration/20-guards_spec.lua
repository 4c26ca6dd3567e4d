-- Per-address guards (README: `guards.*`), decided in C before routing and before any Lua:
-- concurrent connections, new connections per second and requests per second per client
-- address, node-wide across workers, the exempt list, reloads; and the overload behaviour of
-- limits.max_connections (new connections shed at once, the held ones still served).
--
-- A second client address: Linux routes all of 127.0.0.0/8 to the loopback interface, so a
-- socket bound to 127.0.0.2 (or .3, .4...) before connecting is another client as far as the
-- gateway can tell. Each test uses its own source address, so buckets never carry over.

local helpers = require "spec.helpers"

local fmt = string.format
local now = helpers.now

local TIMEOUT = 5 -- upper bound (seconds) on any single wait in this file
local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

-- A connection from `src` to the gateway's port, or nil and an error. src "::1": over IPv6
-- to [::1]:port.
local function connect_from(src, port)
  local c, err = helpers.connect(port, { source = src, timeout = TIMEOUT,
                                         host = src == "::1" and "::1" or "127.0.0.1" })
  if not c then return nil, err:match(": ([^:]+)$") or err end
  return c
end

-- Sends a request on c (keep-alive unless `close`) and reads the answer.
local function send_request(c, path, close, method, body)
  local head = fmt("%s %s HTTP/1.1\r\nHost: guards.test\r\n%s%s\r\n", method or "GET", path,
                   close and "Connection: close\r\n" or "",
                   body and "Content-Length: " .. #body .. "\r\n" or "")
  local ok, err = c:send(head .. (body or ""))
  if not ok then
    return nil, err
  end
  return c:read_response({ timeout = TIMEOUT, method = method })
end

-- Opens a connection from src and asks for path on it. Returns "served", the response and
-- the open connection; or "refused" when the gateway closed or reset it without a byte.
local function try(src, port, path)
  local c, err = connect_from(src, port)
  if not c then
    return "refused", err
  end
  local res, rerr, partial = send_request(c, path or "/")
  if res then
    return "served", res, c
  end
  c:close()
  assert.is_nil(partial, "a partial answer: " .. tostring(rerr))
  assert.is_true(rerr == "reset" or rerr == "closed", "neither served nor refused: "
                 .. tostring(rerr))
  return "refused", rerr
end

-- One request from src on a fresh connection (Connection: close).
local function request_from(src, port, path, method, body)
  local c, err = connect_from(src, port)
  if not c then
    return nil, err
  end
  local res, rerr = send_request(c, path or "/", true, method, body)
  c:close()
  return res, rerr
end

local function close_all(list)
  for _, c in ipairs(list) do
    c:close()
  end
end

local function service(up, extra_routes)
  local routes = { { name = "all", paths = { "/" } } }
  for _, r in ipairs(extra_routes or {}) do
    routes[#routes + 1] = r
  end
  return { { name = "s", url = up.url, routes = routes } }
end

-- Waits until the worker noticed every connection the start-up probes and earlier tests
-- left (the counts only drop when the worker sees the close).
local function settle(gw)
  helpers.eventually(function()
    local res = assert(gw:get("/warmup"))
    assert.equal(200, res.status)
  end, TIMEOUT)
  helpers.sleep(0.1)
end

describe("guards", function()
  local up

  lazy_setup(function()
    up = helpers.upstream()
  end)

  lazy_teardown(function()
    if up then up:stop() end
  end)

  describe("configuration", function()
    it("moongate check reports every guards problem with its path", function()
      local rc, lines = helpers.check({
        guards = {
          per_ip_connections = "lots",
          per_ip_connection_rate = "5/h",
          per_ip_request_rate = { 1 },
          per_ip_request_burst = 0,
          exempt_ips = { "10.0.0.0/8", "10.0.0.0/33" },
          ipv6_prefix = 129,
          zone_size = "1k",
          whatever = 1,
        },
      })
      assert.equal(1, rc)
      assert.same({ -- in the file's order: the spec writes JSON keys sorted
        "guards.exempt_ips[1]: invalid IP or CIDR \"10.0.0.0/33\"",
        "guards.ipv6_prefix: must be at most 128",
        "guards.per_ip_connection_rate: expected a rate such as \"10/s\" or \"600/m\"",
        "guards.per_ip_connections: expected an integer",
        "guards.per_ip_request_burst: must be greater than 0",
        "guards.per_ip_request_rate: expected a rate such as \"10/s\" or \"600/m\"",
        "guards.whatever: unknown field",
        "guards.zone_size: must be at least 65536",
      }, lines)
    end)

    it("refuses a burst without a rate, a rate beyond 1000000 and a zone beyond 1g", function()
      local rc, lines = helpers.check({
        guards = { per_ip_request_burst = 5, per_ip_connection_rate = "1000001/s",
                   zone_size = "2g" },
      })
      assert.equal(1, rc)
      assert.same({
        "guards.per_ip_connection_rate: must be at most 1000000",
        "guards.per_ip_request_burst: needs guards.per_ip_request_rate",
        "guards.zone_size: must be at most 1g",
      }, lines)
    end)

    it("takes rates as N, N/s, Nr/s, N/m or Nr/m, and MOONGATE_GUARDS_* overrides", function()
      for _, rate in ipairs({ 10, "10", "10/s", "10r/s", "600/m", "600r/m", 0 }) do
        local rc, lines = helpers.check({ guards = { per_ip_request_rate = rate,
                                                     per_ip_connection_rate = rate } })
        assert.equal(0, rc, tostring(rate) .. ": " .. table.concat(lines, "\n"))
      end
      local rc, lines = helpers.check({ guards = { per_ip_connections = 3 } },
                                      { env = { MOONGATE_GUARDS_PER_IP_CONNECTIONS = "x",
                                                MOONGATE_GUARDS_EXEMPT_IPS = "10.0.0.1, nope" } })
      assert.equal(1, rc)
      assert.same({
        "env MOONGATE_GUARDS_PER_IP_CONNECTIONS: expected an integer",
        "env MOONGATE_GUARDS_EXEMPT_IPS[1]: invalid IP or CIDR \"nope\"",
      }, lines)
      assert.equal(1, (helpers.check({ guards = { per_ip_connections = -1 } })))
    end)
  end)

  describe("off by default", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({ worker_processes = 2, services = service(up) })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("lets one address hold 30 connections and make 100 quick requests", function()
      local held = {}
      for i = 1, 30 do
        local how, res, c = try("127.0.0.2", gw.port, "/off/" .. i)
        assert.equal("served", how)
        assert.equal(200, res.status)
        held[#held + 1] = c
      end
      for i = 1, 100 do
        local res, err = send_request(held[i % 30 + 1], "/again/" .. i)
        assert.is_table(res, err)
        assert.equal(200, res.status)
      end
      close_all(held)
    end)
  end)

  describe("per_ip_connections", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 2,
        lua_package_path = PLUGIN_PATH,
        plugins = { "bundled", "counter" },
        shared_dicts = { counters = "1m" },
        guards = { per_ip_connections = 4 },
        services = service(up, { { name = "count", paths = { "/count" },
                                   plugins = { { name = "counter" } } } }),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("serves 4 connections from one address, refuses the 5th at once, not another client",
       function()
      settle(gw)
      local held = {}
      for i = 1, 4 do
        local how, res, c = try("127.0.0.2", gw.port, "/held/" .. i)
        assert.equal("served", how, "connection " .. i)
        assert.equal(200, res.status)
        held[i] = c
      end
      local how = try("127.0.0.2", gw.port, "/fifth")
      assert.equal("refused", how)

      -- another address is served, with its own 4
      local others = {}
      for i = 1, 4 do
        local how2, res, c = try("127.0.0.3", gw.port, "/other/" .. i)
        assert.equal("served", how2)
        assert.equal(200, res.status)
        others[i] = c
      end
      assert.equal(200, assert(gw:get("/plain")).status)

      -- the held ones still work; one closing gives exactly one place back
      for i = 1, 4 do
        local res = assert(send_request(held[i], "/again"))
        assert.equal(200, res.status)
      end
      held[1]:close()
      table.remove(held, 1)
      local c
      helpers.eventually(function()
        local how2, res, conn = try("127.0.0.2", gw.port, "/back")
        assert.equal("served", how2)
        assert.equal(200, res.status)
        c = conn
      end, TIMEOUT)
      held[#held + 1] = c
      assert.equal("refused", (try("127.0.0.2", gw.port, "/sixth")))
      close_all(held)
      close_all(others)

      helpers.eventually(function()
        assert.matches("guards: a connection refused %(per_ip_connections%) from 127%.0%.0%.2",
                       gw:error_log())
      end, TIMEOUT)
    end)

    it("counts idle connections that have sent nothing yet", function()
      settle(gw)
      local idle = {}
      for i = 1, 4 do
        idle[i] = assert(connect_from("127.0.0.4", gw.port))
      end
      helpers.sleep(0.3) -- accepted (and counted) by then, though silent
      assert.equal("refused", (try("127.0.0.4", gw.port, "/busy")))
      close_all(idle)
      helpers.eventually(function()
        local how, _, c = try("127.0.0.4", gw.port, "/free")
        assert.equal("served", how)
        c:close()
      end, TIMEOUT)
    end)

    it("is one count for the node: connections spread over both workers add up", function()
      settle(gw)
      -- SO_REUSEPORT spreads the connections by a hash: retry until they landed on both
      -- workers (all four on one happens 1 time in 8), which a per-worker count would not
      -- have refused
      local spread = false
      for attempt = 1, 8 do
        local held, pids = {}, {}
        for i = 1, 4 do
          local how, res, c = try("127.0.0.5", gw.port, "/count?n=" .. i)
          assert.equal("served", how, fmt("attempt %d, connection %d", attempt, i))
          pids[res:json().pid] = true
          held[i] = c
        end
        local n = 0
        for _ in pairs(pids) do n = n + 1 end
        if n == 2 then
          for _ = 1, 5 do
            assert.equal("refused", (try("127.0.0.5", gw.port, "/count")))
          end
          spread = true
        end
        close_all(held)
        if spread then break end
        helpers.eventually(function() -- the four closes are seen before the next attempt
          local how, _, c = try("127.0.0.5", gw.port, "/")
          assert.equal("served", how)
          c:close()
        end, TIMEOUT)
        helpers.sleep(0.1)
      end
      assert.is_true(spread, "connections never landed on both workers")
    end)
  end)

  describe("over IPv6", function()
    local gw, port6

    lazy_setup(function()
      port6 = helpers.get_free_port()
      gw = helpers.start({
        proxy_listen = { "127.0.0.1:" .. helpers.get_free_port(), "[::1]:" .. port6 },
        worker_processes = 2,
        guards = { per_ip_connections = 2, ipv6_prefix = 128 },
        services = service(up),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("counts an IPv6 client as one address too", function()
      local held = {}
      for i = 1, 2 do
        local how, res, c = try("::1", port6, "/v6/" .. i)
        assert.equal("served", how, "connection " .. i)
        assert.equal(200, res.status)
        held[i] = c
      end
      assert.equal("refused", (try("::1", port6, "/v6/3")))
      local how, _, c = try("127.0.0.2", gw.port, "/v4")
      assert.equal("served", how)
      c:close()
      close_all(held)
      helpers.eventually(function()
        local how2, _, c2 = try("::1", port6, "/v6/again")
        assert.equal("served", how2)
        c2:close()
      end, TIMEOUT)
      helpers.eventually(function()
        assert.matches("refused %(per_ip_connections%) from ::1[, ;]", gw:error_log())
      end, TIMEOUT)
    end)
  end)

  describe("per_ip_connection_rate", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 2,
        guards = { per_ip_connection_rate = "3/s" },
        services = service(up),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("accepts 3 new connections at once, refuses the 4th, then one per 1/3 s", function()
      settle(gw)
      local held = {}
      for i = 1, 3 do
        local how, res, c = try("127.0.0.2", gw.port, "/rate/" .. i)
        assert.equal("served", how, "connection " .. i)
        assert.equal(200, res.status)
        held[i] = c
      end
      local t_burst = now()
      assert.equal("refused", (try("127.0.0.2", gw.port, "/rate/4")))
      assert.equal("refused", (try("127.0.0.2", gw.port, "/rate/5")))
      -- open connections are not the limit: the held ones keep working
      for i = 1, 3 do
        assert.equal(200, assert(send_request(held[i], "/still")).status)
      end
      -- another client is not affected (3 new connections: its own burst)
      for i = 1, 3 do
        local res = assert(request_from("127.0.0.3", gw.port, "/other/" .. i))
        assert.equal(200, res.status)
      end
      -- one token comes back every 333 ms, the refusals took none: exactly one passes
      helpers.sleep(math.max(0, t_burst + 0.5 - now()))
      local how, res, c = try("127.0.0.2", gw.port, "/rate/refilled")
      assert.equal("served", how)
      assert.equal(200, res.status)
      assert.equal("refused", (try("127.0.0.2", gw.port, "/rate/again")))
      c:close()
      close_all(held)
      helpers.eventually(function()
        assert.matches("guards: a connection refused %(per_ip_connection_rate%) from "
                       .. "127%.0%.0%.2", gw:error_log())
      end, TIMEOUT)
    end)
  end)

  describe("per_ip_request_rate", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 2,
        lua_package_path = PLUGIN_PATH,
        plugins = { "bundled", "counter" },
        shared_dicts = { counters = "1m" },
        guards = { per_ip_request_rate = "6/m", per_ip_request_burst = 3 },
        services = service(up, { { name = "count", paths = { "/count" },
                                   plugins = { { name = "counter" } } } }),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("passes the burst (3), then answers 429 with Retry-After, other clients served",
       function()
      local c = assert(connect_from("127.0.0.2", gw.port))
      for i = 1, 3 do
        local res = assert(send_request(c, "/burst/" .. i))
        assert.equal(200, res.status)
      end
      local res = assert(send_request(c, "/burst/4"))
      assert.equal(429, res.status)
      assert.same({ message = "Too Many Requests" }, res:json())
      assert.equal("application/json; charset=utf-8", res.headers["content-type"])
      -- 6/m: one request every 10 s; the next one in just under 10 s, rounded up
      assert.equal("10", res.headers["retry-after"])
      assert.is_string(res.headers["x-request-id"])
      assert.is_nil(res.headers.connection) -- keep-alive: the 429 is cheap to repeat
      res = assert(send_request(c, "/burst/5"))
      assert.equal(429, res.status)
      c:close()
      -- per address, not per connection
      res = assert(request_from("127.0.0.2", gw.port, "/burst/new-connection"))
      assert.equal(429, res.status)
      -- other clients keep their own budget
      for i = 1, 3 do
        assert.equal(200, assert(request_from("127.0.0.3", gw.port, "/other/" .. i)).status)
      end
      assert.equal(200, assert(gw:get("/plain")).status)

      helpers.eventually(function() -- the access log is written in batches
        local n429 = 0
        for _, l in ipairs(gw:access_log_lines()) do
          if l.status == 429 then
            n429 = n429 + 1
            assert.equal("127.0.0.2", l.client_ip)
            assert.equal("", l.route) -- refused before routing
          end
        end
        assert.equal(3, n429)
      end, TIMEOUT)
      helpers.eventually(function()
        assert.matches("guards: a request answered 429 %(per_ip_request_rate%) from 127%.0%.0%.2",
                       gw:error_log())
      end, TIMEOUT)
    end)

    it("answers before any Lua: a refused request never reaches a plugin", function()
      local seen = {}
      for i = 1, 6 do
        local res = assert(request_from("127.0.0.4", gw.port, "/count"))
        seen[i] = res.status == 200 and res:json().n or res.status
      end
      -- the counter plugin counted three; the three 429s never ran it
      local base = seen[1]
      assert.same({ base, base + 1, base + 2, 429, 429, 429 }, seen)
      local res = assert(request_from("127.0.0.5", gw.port, "/count"))
      assert.equal(base + 3, res:json().n)
    end)

    it("closes the connection after a 429 when the request body was not read", function()
      for i = 1, 3 do
        assert.equal(200, assert(request_from("127.0.0.6", gw.port, "/b/" .. i)).status)
      end
      local c = assert(connect_from("127.0.0.6", gw.port))
      local res = assert(send_request(c, "/post", false, "POST", string.rep("x", 1000)))
      assert.equal(429, res.status)
      assert.equal("close", res.headers.connection)
      c:close()
    end)
  end)

  describe("per_ip_request_rate refill", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 2,
        guards = { per_ip_request_rate = "5r/s", per_ip_request_burst = 1 },
        services = service(up),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("passes one request per 200 ms with a burst of 1, across workers", function()
      local c = assert(connect_from("127.0.0.2", gw.port))
      assert.equal(200, assert(send_request(c, "/r/1")).status)
      local t1 = now()
      local res = assert(request_from("127.0.0.2", gw.port, "/r/2")) -- any worker
      assert.equal(429, res.status)
      assert.equal("1", res.headers["retry-after"]) -- 200 ms, rounded up to a second
      helpers.sleep(math.max(0, t1 + 0.25 - now()))
      assert.equal(200, assert(send_request(c, "/r/3")).status)
      assert.equal(429, assert(send_request(c, "/r/4")).status)
      c:close()
    end)
  end)

  describe("exempt_ips", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 2,
        guards = {
          per_ip_connections = 1,
          per_ip_connection_rate = "1/m",
          per_ip_request_rate = "1/m",
          exempt_ips = { "127.0.0.3", "127.0.0.128/25" },
        },
        services = service(up),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("applies no guard to exempt addresses and every guard to the others", function()
      for _, src in ipairs({ "127.0.0.3", "127.0.0.200" }) do
        local held = {}
        for i = 1, 5 do
          local how, res, c = try(src, gw.port, "/exempt/" .. i)
          assert.equal("served", how, src .. " connection " .. i)
          assert.equal(200, res.status)
          held[i] = c
        end
        for i = 1, 5 do
          assert.equal(200, assert(send_request(held[i], "/exempt/again")).status)
        end
        close_all(held)
      end
      local how, res, c = try("127.0.0.2", gw.port, "/guarded")
      assert.equal("served", how)
      assert.equal(200, res.status)
      assert.equal(429, assert(send_request(c, "/guarded/2")).status)
      assert.equal("refused", (try("127.0.0.2", gw.port, "/guarded/3")))
      c:close()
      -- 127.0.0.127 is just outside the /25
      assert.equal("served", (try("127.0.0.127", gw.port, "/outside")))
      assert.equal("refused", (try("127.0.0.127", gw.port, "/outside/2")))
    end)
  end)

  describe("reload", function()
    local gw

    local function conf(guards)
      return { worker_processes = 1, guards = guards, services = service(up) }
    end

    lazy_setup(function()
      gw = helpers.start(conf({ per_ip_connections = 2 }))
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("keeps the counts across a reload and applies the new limits", function()
      settle(gw)
      local before = gw:worker_pids()
      -- one connection stays busy in the old worker through the reload
      local busy = assert(connect_from("127.0.0.2", gw.port))
      assert(busy:send("GET /slow HTTP/1.1\r\nHost: guards.test\r\nX-Upstream-Mode: delay:1500"
                       .. "\r\n\r\n"))
      helpers.sleep(0.2)
      assert.is_true(gw:reload(conf({ per_ip_connections = 3, per_ip_request_rate = "1/m",
                                      per_ip_request_burst = 2 })))
      helpers.eventually(function() -- a new worker (the old one drains meanwhile)
        local fresh = false
        for _, pid in ipairs(gw:worker_pids()) do
          if pid ~= before[1] then fresh = true end
        end
        assert.is_true(fresh)
        assert.matches("reload done", gw:error_log())
      end, TIMEOUT)
      helpers.sleep(0.2)
      -- the new worker sees the old worker's connection: 2 more, not 3
      local held = {}
      for i = 1, 2 do
        local how, res, c = try("127.0.0.2", gw.port, "/new/" .. i)
        assert.equal("served", how, "connection " .. i)
        assert.equal(200, res.status)
        held[i] = c
      end
      assert.equal("refused", (try("127.0.0.2", gw.port, "/new/3")))
      -- the new request rate applies too (a burst of 2 at 1/m: the third is refused)
      assert.equal(429, assert(send_request(held[1], "/new/again")).status)
      -- the old worker finishes its request, then closes: its count is given back
      local res, err = busy:read_response({ timeout = TIMEOUT })
      assert.is_table(res, err)
      assert.equal(200, res.status)
      busy:close()
      helpers.eventually(function()
        local how, _, c = try("127.0.0.2", gw.port, "/new/after")
        assert.equal("served", how)
        held[#held + 1] = c
      end, TIMEOUT)
      assert.equal("refused", (try("127.0.0.2", gw.port, "/new/over")))
      close_all(held)
    end)
  end)

  describe("a worker killed while it holds connections", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({ worker_processes = 1, guards = { per_ip_connections = 2 },
                           services = service(up) })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("does not lock their address out: the master forgets the counts", function()
      settle(gw)
      local held = {}
      for i = 1, 2 do
        local how, _, c = try("127.0.0.2", gw.port, "/k/" .. i)
        assert.equal("served", how)
        held[i] = c
      end
      assert.equal("refused", (try("127.0.0.2", gw.port, "/k/3")))
      local victim = gw:worker_pids()[1]
      assert(os.execute("kill -KILL " .. victim))
      helpers.eventually(function()
        local p = gw:worker_pids()
        assert.equal(1, #p)
        assert.are_not.equal(victim, p[1])
      end, TIMEOUT)
      close_all(held) -- their counts died with the worker; the new one starts from 0
      helpers.eventually(function()
        assert.equal(200, assert(gw:get("/k/up")).status)
      end, TIMEOUT)
      local again = {}
      for i = 1, 2 do
        local how, res, c = try("127.0.0.2", gw.port, "/k/again/" .. i)
        assert.equal("served", how, "connection " .. i)
        assert.equal(200, res.status)
        again[i] = c
      end
      assert.equal("refused", (try("127.0.0.2", gw.port, "/k/again/3")))
      close_all(again)
    end)
  end)

  describe("overload: limits.max_connections", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 1,
        limits = { max_connections = 8 },
        services = service(up),
      })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("sheds new connections at once and keeps serving the 8 it holds, busy or idle",
       function()
      settle(gw)
      helpers.sleep(0.2)
      local idle, busy = {}, {}
      for i = 1, 4 do
        local how, res, c = try("127.0.0.2", gw.port, "/idle/" .. i)
        assert.equal("served", how)
        assert.equal(200, res.status)
        idle[i] = c
      end
      for i = 1, 4 do -- requests in flight: the upstream answers after 1.5 s
        busy[i] = assert(connect_from("127.0.0.3", gw.port))
        assert(busy[i]:send("GET /busy/" .. i .. " HTTP/1.1\r\nHost: guards.test\r\n"
                            .. "X-Upstream-Mode: delay:1500\r\n\r\n"))
      end
      helpers.sleep(0.2)

      -- full: a new connection is closed at once, without a byte
      assert.equal("refused", (try("127.0.0.4", gw.port, "/new")))

      -- a flood of new connections meanwhile: each is shed, and the idle held connections
      -- are answered promptly between them
      local flood = {}
      for round = 1, 10 do
        for _ = 1, 30 do
          local c = connect_from("127.0.0.5", gw.port)
          if c then flood[#flood + 1] = c end
        end
        local res = assert(send_request(idle[round % 4 + 1], "/during/" .. round))
        assert.equal(200, res.status)
      end
      for _, c in ipairs(flood) do
        local data, how = c:receive_all(2)
        assert.equal("", data)
        assert.is_true(how == "closed" or how == "reset", "a flood connection was " .. how)
        c:close()
      end

      -- the requests in flight complete
      for i = 1, 4 do
        local res, err = busy[i]:read_response({ timeout = TIMEOUT })
        assert.is_table(res, err)
        assert.equal(200, res.status)
        assert.equal("/busy/" .. i, res:json().path)
      end

      -- room again once held connections close
      close_all(busy)
      helpers.eventually(function()
        local how, _, c = try("127.0.0.4", gw.port, "/room")
        assert.equal("served", how)
        c:close()
      end, TIMEOUT)
      close_all(idle)
    end)
  end)
end)
