-- Upstream health through the PDK (issue 6 item 3): until moongate has an admin API,
-- `moongate.upstream.get_health(name)` reports the health of an upstream's targets in the
-- shape of Kong's `GET /upstreams/{name}/health` — read from the health state the workers
-- share, so every worker answers the same. The fixture plugin `upstream-health` serves it on
-- a route. A target probed unhealthy by active checks turns UNHEALTHY, and HEALTHY again once
-- it recovers; an upstream without health checks reports HEALTHCHECKS_OFF, as Kong does.

local helpers = require "spec.helpers"

local fmt = string.format

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("moongate.upstream.get_health", function()
  local good, bad, gw

  lazy_setup(function()
    good = helpers.upstream()
    bad = helpers.upstream()
    gw = helpers.start({
      worker_processes = 2,
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "upstream-health" },
      upstreams = {
        { name = "pool",
          targets = { { target = "127.0.0.1:" .. good.port },
                      { target = "127.0.0.1:" .. bad.port, weight = 30 } },
          healthchecks = { active = { http_path = "/hc",
                                      healthy = { interval = 0.1, successes = 1 },
                                      unhealthy = { interval = 0.1, http_failures = 2 } } } },
        { name = "plain", targets = { { target = "127.0.0.1:" .. good.port } } },
      },
      services = { { name = "svc", host = "pool", routes = {
        { name = "health", paths = { "/health" },
          plugins = { { name = "upstream-health", config = { upstream = "pool" } } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    good:stop()
    bad:stop()
  end)

  -- The health report, over a fresh connection (so both workers answer in turn).
  local function health(name)
    local res = assert(gw:request({ method = "GET", path = "/health",
                                    query = name and { name = name } or nil }))
    return res.status, res:json()
  end

  local function by_target(report)
    local t = {}
    for _, entry in ipairs(report.data) do t[entry.target] = entry end
    return t
  end

  it("reports every target HEALTHY in Kong's shape", function()
    helpers.eventually(function()
      local status, report = health()
      assert.equal(200, status)
      assert.equal(2, report.total)
      assert.is_string(report.node_id)
      local good_t = fmt("127.0.0.1:%d", good.port)
      assert.same({ target = good_t, weight = 100, health = "HEALTHY",
                    upstream = { name = "pool" },
                    data = { addresses = { { ip = "127.0.0.1", port = good.port,
                                             health = "HEALTHY", weight = 100 } } } },
                  by_target(report)[good_t])
      assert.equal("HEALTHY", by_target(report)[fmt("127.0.0.1:%d", bad.port)].health)
      assert.equal(30, by_target(report)[fmt("127.0.0.1:%d", bad.port)].weight)
    end, 3)
  end)

  it("turns a failing target UNHEALTHY and back to HEALTHY when it recovers", function()
    local bad_t = fmt("127.0.0.1:%d", bad.port)
    bad:set_mode("status:503")
    helpers.eventually(function()
      local _, report = health()
      assert.equal("UNHEALTHY", by_target(report)[bad_t].health)
      assert.equal("UNHEALTHY", by_target(report)[bad_t].data.addresses[1].health)
    end, 5)
    -- the state is shared: every worker, on any connection, reports the same
    for _ = 1, 6 do
      local _, report = health()
      assert.equal("UNHEALTHY", by_target(report)[bad_t].health)
      assert.equal("HEALTHY", by_target(report)[fmt("127.0.0.1:%d", good.port)].health)
    end
    bad:set_mode(nil)
    helpers.eventually(function()
      local _, report = health()
      assert.equal("HEALTHY", by_target(report)[bad_t].health)
    end, 5)
  end)

  it("reports HEALTHCHECKS_OFF for an upstream without health checks", function()
    local status, report = health("plain")
    assert.equal(200, status)
    assert.equal(1, report.total)
    assert.equal("HEALTHCHECKS_OFF", report.data[1].health)
    assert.equal("HEALTHCHECKS_OFF", report.data[1].data.addresses[1].health)
  end)

  it("answers nil, 'upstream not found' for an unknown upstream", function()
    local status, body = health("nope")
    assert.equal(404, status)
    assert.same({ message = "upstream not found" }, body)
  end)
end)
