-- Slowloris (slowhttptest -H): 1,000 connections that send a request head a few bytes at a
-- time and never finish it. Slow clients are bounded by the core's timeouts (the head has a
-- total deadline, limits.client_header_timeout, 10 s by default: not reset by each trickle of
-- bytes) and cost the worker nothing while they wait, so a normal client making sequential
-- requests meanwhile keeps >= 99.9 % success. With guards.per_ip_connections the attack's
-- address never holds more than its share at all, and another client is not touched.
--
-- slowhttptest is a Debian package (installed by .ci/run); without it this spec fails with
-- the reason rather than skipping. It runs under `timeout` so that it is bounded even if this
-- process dies, and is stopped by its pid. The whole file takes about 20 seconds.

local helpers = require "spec.helpers"
local socket = require "socket"

local fmt, concat = string.format, table.concat
local now = helpers.now

local TIMEOUT = 5

local function sh(cmd)
  return helpers.run(cmd .. " 2>&1")
end

local function require_slowhttptest()
  local out = sh("command -v slowhttptest")
  local path = out:match("(%S+)")
  assert(path, "slowhttptest is not installed: `apt-get install slowhttptest` "
         .. "(.ci/run and scripts/deps.sh install it); this spec cannot prove anything without it")
  -- 1,000 sockets and a few more: raise the soft limit in its shell when it is lower
  local hard = tonumber((sh("ulimit -Hn"):match("(%d+)"))) or math.huge
  assert(hard >= 1100, fmt("the open-file hard limit (%s) is below the 1,100 descriptors "
                           .. "slowhttptest needs for 1,000 connections", tostring(hard)))
  return path
end

-- Starts slowhttptest in the background; returns its pid (the `timeout` wrapper's, which
-- passes signals on) and the file its report goes to.
local function start_slowloris(port, conns, rate, interval, length)
  local dir = sh("mktemp -d /tmp/moongate-spec.slowloris.XXXXXX"):match("(%S+)")
  local log = dir .. "/slowhttptest.log"
  local cmd = fmt("ulimit -n %d 2>/dev/null; timeout -k 2 %d slowhttptest -H -c %d -r %d -i %d "
                  .. "-l %d -p 3 -u http://127.0.0.1:%d/slow >%s 2>&1 </dev/null & echo $!",
                  conns + 1000, length + 10, conns, rate, interval, length, port,
                  helpers.shell_quote(log))
  local out = sh(cmd)
  local pid = tonumber(out:match("(%d+)"))
  assert(pid, "could not start slowhttptest: " .. out)
  return pid, log, dir
end

local function alive(pid)
  local stat = helpers.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %(.-%) [ZX]")
end

local function stop(pid, dir)
  if pid and alive(pid) then
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    for _ = 1, 30 do
      if not alive(pid) then break end
      helpers.sleep(0.1)
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  end
  if dir and not os.getenv("MOONGATE_SPEC_KEEP") then
    os.execute("rm -rf " .. helpers.shell_quote(dir))
  end
end

-- Open descriptors of the gateway's (single) worker: listening socket, logs, a few pipes,
-- and one per client connection.
local function worker_fds(gw)
  local pid = gw:worker_pids()[1]
  local out = sh(fmt("ls /proc/%d/fd | wc -l", pid))
  return tonumber(out:match("(%d+)")) or 0
end

-- Sequential requests on fresh connections for `seconds`; returns ok, total, failures (a
-- few described), and the slowest answer.
local function normal_client(port, seconds, src)
  local ok, total, slowest, why = 0, 0, 0, {}
  local deadline = now() + seconds
  while now() < deadline do
    total = total + 1
    local t = now()
    local res, err
    if src then
      local sock = socket.tcp()
      assert(sock:bind(src, 0))
      sock:settimeout(TIMEOUT)
      local c = sock:connect("127.0.0.1", port)
      if c then
        sock:send("GET /normal/" .. total .. " HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        local data = sock:receive("*a")
        local list = data and helpers.parse_response(data)
        res = list and list[1]
      end
      sock:close()
      err = res and nil or "no answer"
    else
      res, err = helpers.request(port, { path = "/normal/" .. total, timeout = TIMEOUT })
    end
    slowest = math.max(slowest, now() - t)
    if res and res.status == 200 then
      ok = ok + 1
    elseif #why < 5 then
      why[#why + 1] = res and ("status " .. res.status) or tostring(err)
    end
  end
  return ok, total, why, slowest
end

describe("slowloris", function()
  local up, path

  lazy_setup(function()
    path = require_slowhttptest()
    up = helpers.upstream()
  end)

  lazy_teardown(function()
    if up then up:stop() end
  end)

  describe("1,000 slow connections against the defaults", function()
    local gw, pid, dir

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 1,
        access_log = "off",
        services = { { name = "s", url = up.url, routes = { { paths = { "/" } } } } },
      })
    end)

    lazy_teardown(function()
      stop(pid, dir)
      if gw then gw:stop() end
    end)

    it("a normal client keeps >= 99.9 % success and the heads time out", function()
      assert.is_string(path)
      local base = worker_fds(gw)
      local t0 = now()
      local log
      -- 200 new connections a second up to 1,000; a header line every 5 s keeps each one
      -- busy until the gateway's total head deadline (10 s) closes it
      pid, log, dir = start_slowloris(gw.port, 1000, 200, 5, 30)
      local peak = 0
      helpers.eventually(function()
        peak = math.max(peak, worker_fds(gw) - base)
        assert.is_true(peak >= 900, fmt("only %d slow connections so far; slowhttptest:\n%s",
                                        peak, helpers.read_file(log) or ""))
      end, 9, 0.2)
      -- measure while the 1,000 are open and while the gateway times them out
      local ok, total, why, slowest = normal_client(gw.port, 7)
      local rate = ok / total
      -- enough requests for 99.9 % to mean something (a count, not a speed: any machine
      -- makes hundreds of loopback requests in 7 s)
      assert.is_true(total >= 200, fmt("only %d requests in 7 s", total))
      assert.is_true(rate >= 0.999, fmt("%d of %d requests succeeded (%.3f %%), slowest %.3f s; "
                                        .. "first failures: %s", ok, total, rate * 100,
                                        slowest, concat(why, "; ")))
      -- every slow head is cut at 10 s after it started (the last started ~5 s in)
      helpers.eventually(function()
        assert.is_true(worker_fds(gw) - base < 20,
                       fmt("%d connections still open %.1f s in", worker_fds(gw) - base,
                           now() - t0))
      end, math.max(1, t0 + 19 - now()), 0.25)
      stop(pid, nil)
      print(fmt("# slowloris: peak %d slow connections, normal client %d/%d ok, slowest %.3f s",
                peak, ok, total, slowest))
    end)
  end)

  describe("with guards.per_ip_connections", function()
    local gw, pid, dir

    lazy_setup(function()
      gw = helpers.start({
        worker_processes = 1,
        access_log = "off",
        guards = { per_ip_connections = 50 },
        services = { { name = "s", url = up.url, routes = { { paths = { "/" } } } } },
      })
    end)

    lazy_teardown(function()
      stop(pid, dir)
      if gw then gw:stop() end
    end)

    it("the attacking address holds at most 50 connections, another address is untouched",
       function()
      local base = worker_fds(gw)
      local _
      pid, _, dir = start_slowloris(gw.port, 1000, 500, 5, 10)
      helpers.sleep(1) -- the attack is at 500 attempts by then
      local ok, total, why, slowest = normal_client(gw.port, 4, "127.0.0.2")
      local most = worker_fds(gw) - base
      assert.is_true(most <= 52, fmt("%d connections open", most))
      assert.is_true(most >= 40, fmt("only %d slow connections: the attack did not run", most))
      assert.equal(total, ok, fmt("%d of %d requests failed (%s), slowest %.3f s", total - ok,
                                  total, concat(why, "; "), slowest))
      assert.is_true(total >= 200, fmt("only %d requests in 4 s", total))
      stop(pid, nil)
      helpers.eventually(function()
        assert.matches("guards: a connection refused %(per_ip_connections%) from 127%.0%.0%.1",
                       gw:error_log())
      end, TIMEOUT)
    end)
  end)
end)
