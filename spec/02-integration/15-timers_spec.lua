-- moongate.timer.at / every: functions that run later or periodically in a worker, outside
-- any request, in their own coroutine (they may sleep); a failing timer is logged with its
-- plugin's name and does not disturb requests.

local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("timers", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "ticker" },
      worker_processes = 1,
      shared_dicts = { ticks = "64k" },
      services = { { name = "s", url = up.url, routes = {
        { name = "t", paths = { "/t" }, plugins = { { name = "ticker" } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("runs a periodic timer started in init_worker", function()
    local first = assert(gw:get("/t")):json().every
    helpers.sleep(0.5)
    local later = assert(gw:get("/t")):json().every
    assert.is_true(later - first >= 5, "ticks: " .. first .. " -> " .. later)
  end)

  it("runs a one-shot timer with its arguments, after the request, and lets it sleep",
     function()
    assert.equal("", assert(gw:get("/t?do=at")):json().at)
    helpers.eventually(function()
      assert.equal("from-request:on-time", assert(gw:get("/t")):json().at)
    end, 3)
  end)

  it("logs a timer that calls a request function, naming the plugin", function()
    assert.equal(200, assert(gw:get("/t?do=misuse")).status)
    helpers.eventually(function()
      assert.matches("%[ticker%] timer failed: .-moongate.request.get_path is not allowed in the "
                     .. "timer phase", gw:error_log())
    end, 3)
    assert.equal(200, assert(gw:get("/t")).status)
  end)
end)
