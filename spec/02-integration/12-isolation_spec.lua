-- Isolation (issue: a failing plugin fails only its request, never the gateway): a plugin
-- stuck in a loop is interrupted (interpreted code: 500 for that request) or its worker is
-- killed by the master's watchdog and respawned (JIT-compiled code), and the error log names
-- the plugin; a memory bomb hits lua_memory_limit and fails only its request.

local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("plugin isolation", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "looper", "hog" },
      worker_processes = 1,
      worker_stall_timeout = "2s",
      lua_memory_limit = "32m",
      services = {
        { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
        { name = "loops", url = up.url, routes = {
            { name = "jit-loop", paths = { "/jit-loop" },
              plugins = { { name = "looper", config = { mode = "jit" } } } },
            { name = "interp-loop", paths = { "/interp-loop" },
              plugins = { { name = "looper", config = { mode = "interp" } } } },
            { name = "hog", paths = { "/hog" }, plugins = { { name = "hog" } } },
          } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("ends an interpreted endless loop with a 500 for that request only", function()
    local pid = gw:worker_pids()[1]
    local res = assert(gw:get("/interp-loop", { timeout = 5 }))
    assert.equal(500, res.status)
    assert.same({ pid }, gw:worker_pids())               -- the worker survived
    assert.matches("plugin interrupted", gw:error_log())
    assert.equal(200, assert(gw:get("/plain")).status)
  end)

  it("kills and respawns a worker stuck in a compiled loop, naming the plugin", function()
    local pid = gw:worker_pids()[1]
    local c = assert(helpers.connect(gw.port, { timeout = 10 }))
    assert(c:send("GET /jit-loop HTTP/1.1\r\nHost: x\r\n\r\n"))
    -- other routes answer again within the stall timeout (2 s) plus a respawn: the guard
    helpers.eventually(function()
      local res = assert(gw:get("/plain", { timeout = 1 }))
      assert.equal(200, res.status)
      local pids = gw:worker_pids()
      assert.equal(1, #pids)
      assert.not_equal(pid, pids[1])
    end, 8)
    local raw, closed = c:receive_all(1)
    c:close()
    assert.is_not_matches("^HTTP/1.1 200", raw or "")     -- the stuck request was cut
    local log = gw:error_log()
    assert.matches('stayed inside Lua for [%d.]+ s %(worker_stall_timeout 2.0 s%): plugin "looper", '
                   .. 'access phase, route "jit%-loop"', log)
  end)

  it("turns a memory bomb into a 500 and keeps the worker", function()
    local pid = gw:worker_pids()[1]
    local res = assert(gw:get("/hog", { timeout = 10 }))
    assert.equal(500, res.status)
    assert.same({ pid }, gw:worker_pids())
    assert.matches("not enough memory", gw:error_log())
    assert.equal(200, assert(gw:get("/plain")).status)
    assert.equal(500, assert(gw:get("/hog", { timeout = 10 })).status)   -- and again
    assert.equal(200, assert(gw:get("/plain")).status)
  end)
end)
