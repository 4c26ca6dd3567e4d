-- Processes: the command line, the master and its workers (DESIGN.md §1–2, README "Command
-- line"): version, worker count, single-process mode, respawn, SIGHUP reload (good, broken
-- and under load), graceful and fast stop, and the daemon's start / reload / stop.

local helpers = require "spec.helpers"

local read_file, write_file = helpers.read_file, helpers.write_file
local shell_quote = helpers.shell_quote

local fmt, match = string.format, string.match

local BIN = os.getenv("MOONGATE_BIN") or "./build/moongate"

-- Runs a shell command line; returns its output (stdout and stderr) and exit code.
local function sh(cmd)
  return helpers.run("(" .. cmd .. ") 2>&1 </dev/null")
end

local function pid_alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then
    return false
  end
  local state = match(stat, "^.*%) (%S)")
  return state ~= "Z" and state ~= "X"
end

local function kill(pid, sig)
  os.execute(fmt("kill -%s %d 2>/dev/null", sig, pid))
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end

local function routes(up, paths)
  return { { name = "svc", url = up.url, routes = { { name = "r", paths = paths } } } }
end

-- Sends a GET through a held connection and returns the client, without reading.
local function send_delayed(port, path, delay_ms)
  local c = assert(helpers.connect(port, { timeout = 10 }))
  assert(c:send(fmt("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Upstream-Mode: delay:%d\r\n" ..
                    "Connection: close\r\n\r\n", path, delay_ms)))
  return c
end

local function refuses(port)
  local c = helpers.connect(port, { timeout = 0.5 })
  if not c then
    return true
  end
  -- accepted by a kernel queue nobody serves: a request gets no answer
  c:close()
  return false
end

describe("processes", function()
  local up

  lazy_setup(function()
    up = helpers.upstream()
  end)

  lazy_teardown(function()
    up:stop()
  end)

  it("`moongate version` prints \"moongate X.Y.Z\"", function()
    local out, rc = sh(shell_quote(BIN) .. " version")
    assert.equal(0, rc)
    assert.matches("^moongate %d+%.%d+%.%d+\n$", out)
  end)

  it("`run` with worker_processes 3 has exactly 3 worker children", function()
    local gw = helpers.start({ worker_processes = 3, services = routes(up, { "/" }) })
    finally(function() gw:stop() end)
    local pids = helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(3, #p)
      return p
    end, 5)
    for _, pid in ipairs(pids) do
      assert.not_equal(gw.pid, pid)
    end
    assert.equal(200, assert(gw:get("/")).status)
  end)

  it("master_process off serves requests from a single process without children", function()
    local gw = helpers.start({ master_process = false, worker_processes = 2,
                               services = routes(up, { "/" }) })
    finally(function() gw:stop() end)
    for _ = 1, 5 do
      assert.equal(200, assert(gw:get("/one")).status)
    end
    assert.same({}, gw:worker_pids())
  end)

  it("respawns a worker killed with SIGKILL and keeps serving", function()
    local gw = helpers.start({ worker_processes = 2, services = routes(up, { "/" }) })
    finally(function() gw:stop() end)
    local before = helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(2, #p)
      return p
    end, 5)
    local victim = before[1]
    kill(victim, "KILL")
    local after = helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(2, #p)
      assert.is_nil(set_of(p)[victim])
      return p
    end, 5)
    assert.is_true(set_of(after)[before[2]])
    for _ = 1, 10 do
      local res, err = gw:get("/after-respawn")
      assert.is_nil(err)
      assert.equal(200, res.status)
    end
    assert.is_true(gw:running())
  end)

  it("SIGHUP with a changed route serves the new route and replaces the workers", function()
    local conf = { worker_processes = 2, services = routes(up, { "/old" }) }
    local gw = helpers.start(conf)
    finally(function() gw:stop() end)
    assert.equal(404, assert(gw:get("/new")).status)
    local old = helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(2, #p)
      return p
    end, 5)
    assert.is_true(gw:reload({ worker_processes = 2, services = routes(up, { "/new" }) }))
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/new")).status)
    end, 5)
    helpers.eventually(function()
      assert.equal(404, assert(gw:get("/old")).status)
    end, 5)
    helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(2, #p)
      for _, pid in ipairs(old) do
        assert.is_false(pid_alive(pid), "old worker " .. pid .. " still runs")
      end
    end, 5)
    assert.is_true(gw:running())
  end)

  it("a reload with a broken config keeps the running one and logs PATH: message", function()
    local gw = helpers.start({ worker_processes = 2, services = routes(up, { "/old" }) })
    finally(function() gw:stop() end)
    local before = helpers.eventually(function()
      local p = gw:worker_pids()
      assert.equal(2, #p)
      return p
    end, 5)
    assert.is_true(gw:reload({ worker_processes = 2, services = routes(up, { "broken" }) }))
    helpers.eventually(function()
      assert.matches('services%[0%]%.routes%[0%]%.paths%[0%]: must start with "/" or "~"',
                     gw:error_log())
    end, 5)
    helpers.sleep(0.3)
    assert.equal(200, assert(gw:get("/old")).status)
    assert.same(before, gw:worker_pids())
    assert.is_true(gw:running())
  end)

  it("three reloads under load (wrk) fail no request", function()
    local gw = helpers.start({ worker_processes = 2, services = routes(up, { "/" }) })
    finally(function() gw:stop() end)
    local out = gw.prefix .. "/wrk.out"
    local rc = os.execute(fmt("wrk -t2 -c20 -d4s %s >%s 2>&1 &",
                              shell_quote(gw.url .. "/load"), shell_quote(out)))
    assert.truthy(rc == 0 or rc == true)
    helpers.sleep(0.7)
    for i = 1, 3 do
      -- each reload changes the config, so each one really is a new generation
      local paths = { "/", "/gen" .. i }
      assert.is_true(gw:reload({ worker_processes = 2, services = routes(up, paths) }))
      helpers.sleep(0.7)
    end
    local text = helpers.eventually(function()
      local t = read_file(out) or ""
      assert.matches("Requests/sec", t)
      return t
    end, 8, 0.1)
    assert.not_matches("Socket errors", text)
    assert.not_matches("Non%-2xx or 3xx responses", text)
    local n = tonumber(match(text, "(%d+) requests in"))
    assert.is_truthy(n, text)
    assert.is_true(n > 0, text)
    assert.matches("reload done", gw:error_log())
    assert.equal(200, assert(gw:get("/gen3")).status)
  end)

  it("SIGTERM lets an in-flight request finish, refuses new connections, exits 0", function()
    local gw = helpers.start({ worker_processes = 1, services = routes(up, { "/" }),
                               limits = { worker_shutdown_timeout = "5s" } })
    finally(function() gw:stop() end)
    local c = send_delayed(gw.port, "/slow", 1500)
    finally(function() c:close() end)
    helpers.eventually(function()            -- the request reached the upstream
      assert.equal("/slow", (up:last_request() or {}).path)
    end, 2, 0.02)
    local t0 = helpers.now()
    assert.is_true(gw:kill("TERM"))
    helpers.eventually(function()
      assert.is_true(refuses(gw.port), "new connections still accepted")
    end, 1, 0.05)
    local res, err = c:read_response({ timeout = 5 })
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.equal("/slow", res:json().path)
    assert.equal(0, gw:wait_exit(5 - (helpers.now() - t0)))
  end)

  it("SIGQUIT exits at once and cuts an in-flight request", function()
    local gw = helpers.start({ worker_processes = 1, services = routes(up, { "/" }) })
    finally(function() gw:stop() end)
    local c = send_delayed(gw.port, "/cut", 3000)
    finally(function() c:close() end)
    helpers.eventually(function()
      assert.equal("/cut", (up:last_request() or {}).path)
    end, 2, 0.02)
    assert.is_true(gw:kill("QUIT"))
    local code = gw:wait_exit(1)       -- the request in flight is not waited for (3 s)
    assert.is_truthy(code, "master still runs 1 s after SIGQUIT")
    local data, how = c:receive_all(1)
    assert.truthy(how == "closed" or how == "reset", how)
    assert.not_matches("^HTTP/1%.1 200", data)
  end)

  describe("daemon (start / reload / stop with a pid file)", function()
    local dir

    lazy_setup(function()
      local out = sh("mktemp -d /tmp/moongate-spec.daemon.XXXXXX")
      dir = assert(match(out, "^(%S+)"))
    end)

    lazy_teardown(function()
      -- whatever a failed test left running: the master named by the pid file, by pid
      local pid = tonumber(read_file(dir .. "/logs/moongate.pid") or "")
      if pid and pid_alive(pid) then
        for child in (read_file(fmt("/proc/%d/task/%d/children", pid, pid)) or ""):gmatch("%d+") do
          kill(tonumber(child), "KILL")
        end
        kill(pid, "KILL")
      end
      if not os.getenv("MOONGATE_SPEC_KEEP") then
        os.execute("rm -rf " .. shell_quote(dir))
      end
    end)

    local function write_conf(file, port, paths)
      write_file(file, helpers.json_encode({
        proxy_listen = helpers.array({ "127.0.0.1:" .. port }),
        worker_processes = 1,
        error_log = dir .. "/error.log",
        access_log = "off",
        services = routes(up, paths),
      }) .. "\n")
    end

    it("`start` daemonises, `reload` reloads and `stop` stops via the pid file", function()
      local port = helpers.get_free_port()
      local conf = dir .. "/moongate.json"
      local pidf = dir .. "/logs/moongate.pid"    -- logs/ does not exist yet
      write_conf(conf, port, { "/one" })

      local out, rc = sh(fmt("timeout 20 %s start -c %s -p %s", shell_quote(BIN),
                             shell_quote(conf), shell_quote(pidf)))
      assert.equal(0, rc, out)                 -- returned (timeout(1) would answer 124)

      local pid = helpers.eventually(function()
        local p = tonumber(read_file(pidf) or "")
        assert.is_truthy(p, "no pid file")
        assert.is_true(pid_alive(p))
        return p
      end, 5)
      helpers.eventually(function()
        assert.equal(200, assert(helpers.request(port, { path = "/one" })).status)
      end, 5)

      write_conf(conf, port, { "/two" })
      out, rc = sh(fmt("%s reload -c %s -p %s", shell_quote(BIN), shell_quote(conf),
                       shell_quote(pidf)))
      assert.equal(0, rc, out)
      helpers.eventually(function()
        assert.equal(200, assert(helpers.request(port, { path = "/two" })).status)
        assert.equal(404, assert(helpers.request(port, { path = "/one" })).status)
      end, 5)
      assert.equal(pid, tonumber(read_file(pidf)))

      out, rc = sh(fmt("timeout 20 %s stop -c %s -p %s", shell_quote(BIN), shell_quote(conf),
                       shell_quote(pidf)))
      assert.equal(0, rc, out)
      assert.is_false(pid_alive(pid))
      assert.is_nil(read_file(pidf), "pid file left behind")
      assert.is_nil(helpers.connect(port, { timeout = 1 }))
    end)

    it("`stop` without a running master exits 1 with a clear message", function()
      local pidf = dir .. "/nowhere/moongate.pid"
      local out, rc = sh(fmt("timeout 10 %s stop -p %s", shell_quote(BIN), shell_quote(pidf)))
      assert.equal(1, rc, out)
      assert.matches("no running master", out, 1, true)
      assert.matches(pidf, out, 1, true)
    end)
  end)
end)
