-- Logs (README "Configuration" / "Command line"): the error log honours log_level, the logs
-- are reopened on SIGUSR1 / `moongate reopen` so that logrotate can move them away, and the
-- gateway's own answers carry Date and never a version. A single-process gateway survives
-- SIGHUP.

local helpers = require "spec.helpers"

local read_file = helpers.read_file

local BIN = os.getenv("MOONGATE_BIN") or "./build/moongate"

local function services(up)
  return { { name = "svc", url = up.url, routes = { { name = "r", paths = { "/" } } } } }
end

describe("logs", function()
  local up

  lazy_setup(function()
    up = helpers.upstream()
  end)

  lazy_teardown(function()
    up:stop()
  end)

  it("leaves info lines out of the error log at log_level error and keeps them at info",
     function()
    local quiet = helpers.start({ log_level = "error", services = services(up) })
    local chatty = helpers.start({ log_level = "info", services = services(up) })
    finally(function()
      quiet:stop()
      chatty:stop()
    end)
    for _, gw in ipairs({ quiet, chatty }) do
      -- a bad request is logged at info level
      helpers.raw(gw.port, "GET / HTTP/1.1\r\n\r\n")
    end
    helpers.eventually(function()
      assert.matches("%[info%] %d+: bad request from client: missing Host", chatty:error_log())
    end, 3)
    assert.not_matches("%[info%]", quiet:error_log())
    assert.not_matches("bad request from client", quiet:error_log())
  end)

  it("reopens the access and error logs on SIGUSR1 after they were moved away", function()
    local gw = helpers.start({ services = services(up) })
    finally(function() gw:stop() end)
    assert.equal(200, assert(gw:get("/before")).status)
    helpers.eventually(function()
      assert.equal(1, #gw:access_log_lines())
    end, 3)
    local access = gw.access_log_path
    assert(os.rename(access, access .. ".1"))
    gw:kill("USR1")
    helpers.eventually(function()                 -- the new file exists once reopened
      assert.is_truthy(read_file(access), "access log not recreated yet")
    end, 3)
    assert.equal(200, assert(gw:get("/after")).status)
    helpers.eventually(function()
      local lines = gw:access_log_lines()
      assert.equal(1, #lines)
      assert.equal("/after", lines[1].path)
    end, 3)
    assert.matches('"path":"/before"', read_file(access .. ".1"))
    assert.not_matches('"path":"/after"', read_file(access .. ".1"))
  end)

  it("`moongate reopen -p PIDFILE` signals the master to reopen its logs", function()
    local gw = helpers.start({ services = services(up) })
    finally(function() gw:stop() end)
    local err = gw.error_log_path
    assert(os.rename(err, err .. ".1"))
    local rc = os.execute(BIN .. " reopen -p " .. gw.prefix .. "/logs/moongate.pid")
    assert.is_true(rc == 0 or rc == true)
    helpers.eventually(function()
      assert.matches("logs reopened", read_file(err) or "")
    end, 3)
  end)

  it("answers the gateway's own errors with a Date header and Server without a version",
     function()
    local gw = helpers.start({ services = services(up) })
    finally(function() gw:stop() end)
    local raw = helpers.raw(gw.port, "GET / HTTP/1.1\r\n\r\n")    -- no Host: 400
    assert.matches("^HTTP/1.1 400 ", raw)
    assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n", raw)
    assert.matches("\r\nServer: moongate\r\n", raw)
  end)

  it("keeps serving after SIGHUP with master_process off (reload needs a master)", function()
    local gw = helpers.start({ master_process = false, services = services(up) })
    finally(function() gw:stop() end)
    gw:kill("HUP")
    helpers.eventually(function()
      assert.matches("reload needs master_process: on", gw:error_log())
    end, 3)
    assert.is_true(gw:running())
    assert.equal(200, assert(gw:get("/")).status)
  end)
end)
