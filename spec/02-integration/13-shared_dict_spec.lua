-- Shared dictionaries (shared_dicts setting, moongate.shared.<name>): every operation through
-- a plugin, and exactness across workers: concurrent increments from two workers add up.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("shared dictionaries", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "counter", "dictops" },
      worker_processes = 2,
      shared_dicts = { counters = "1m", scratch = "256k" },
      services = { { name = "s", url = up.url, routes = {
        { name = "count", paths = { "/count" }, plugins = { { name = "counter" } } },
        { name = "ops", paths = { "/ops" }, plugins = { { name = "dictops" } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("implements get/set/add/replace/incr/ttl/expire/delete/get_keys/flush with "
     .. "lua_shared_dict's results", function()
    local res = assert(gw:get("/ops"))
    assert.equal(200, res.status)
    local r = res:json()
    assert.is_true(r.missing_dict)
    assert.same({ true, cjson.null, false }, { r.set[1], r.set[2] or cjson.null, r.set[3] })
    assert.equal("string value", r.get_s)
    assert.equal(41.5, r.get_n)
    assert.equal(false, r.get_b)
    assert.same({ false, "exists", false }, r.add_exists)
    assert.same({ false, "not found", false }, r.replace_missing)
    assert.equal("replaced", r.get_replaced)
    assert.equal(42.5, r.incr[1])
    assert.equal("not found", r.incr_missing[2])
    assert.equal(15, r.incr_init[1])
    assert.equal("not a number", r.incr_string[2])
    assert.equal(0, r.ttl_forever)
    assert.is_true(r.ttl_set)
    assert.is_true(r.expire[1])
    assert.equal(0, r.ttl_after_expire)
    assert.equal("not found", r.ttl_missing[2])
    assert.is_true(r.deleted)
    assert.is_true(r.big[1])
    assert.equal(20000, r.big_len)
    assert.same({ "big", "fresh", "n", "s", "t" }, r.keys)
    assert.is_true(r.capacity > 200000)
    assert.is_true(r.free_ok)
    assert.equal("gone soon", r.short_before)
    assert.is_nil(r.short_after)
    assert.same({ "gone soon", true }, r.stale)
    assert.is_true(r.flushed >= 1)
    assert.is_true(r.bad_value)
  end)

  it("counts exactly across two workers under concurrent load", function()
    local pids = {}
    for _ = 1, 40 do                                  -- both workers take part
      local res = assert(gw:get("/count"))
      pids[res:json().pid] = true
    end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.equal(2, n, "only one worker answered")
    -- 16 connections x 50 pipelined requests, all in flight at once across both workers
    local conns, per = {}, 50
    local req = "GET /count HTTP/1.1\r\nHost: x\r\n\r\n"
    for i = 1, 16 do
      conns[i] = assert(helpers.connect(gw.port, { timeout = 10 }))
      assert(conns[i]:send(req:rep(per)))
    end
    local total = 0
    for i = 1, 16 do
      for _ = 1, per do
        local res = assert(conns[i]:read_response({ timeout = 10 }))
        assert.equal(200, res.status)
        total = total + 1
      end
      conns[i]:close()
    end
    local now = assert(gw:get("/count?read=1")):json().n
    assert.equal(40 + 16 * per, now)
    assert.equal(16 * per, total)
  end)
end)
