-- rate-limiting is exact under concurrency: every request is counted and judged in one
-- atomic step, so a burst of N concurrent requests against a limit L lets exactly L through.
--  * local policy, one node with 4 workers sharing the dictionary: 500 concurrent requests,
--    limit 100 per minute (fixed) and per hour (sliding) -> exactly 100 pass;
--  * redis policy, two nodes (2 workers each) on one redis-server, loaded at the same time:
--    600 requests in all -> exactly 100 pass, fixed and sliding.
-- The bursts come from curl --parallel (100 connections at once per node); a fixture plugin
-- says which worker answered, to check that the load really was spread over the workers.
local helpers = require "spec.helpers"
local kit = require "fixtures.rate-limiting.kit"

local FIXTURES = os.getenv("PWD") .. "/spec/fixtures/rate-limiting/?.lua;;"

local function count(t, code) return t[code] or 0 end

local function size(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- an hour window must not end during a burst either
local function room_in_hour(margin)
  local now = helpers.now()
  local left = 3600 - now % 3600
  if left < margin then helpers.sleep(left + 0.05) end
end

describe("rate-limiting exactness", function()
  local up

  lazy_setup(function() up = helpers.upstream() end)
  lazy_teardown(function() if up then up:stop() end end)

  local function services(policy, redis)
    local function svc(name, config)
      config.policy, config.redis = policy, redis
      return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
               plugins = { { name = "rate-limiting", config = config } } }
    end
    return {
      svc("fixed", { minute = 100, limit_by = "ip" }),
      svc("sliding", { hour = 100, limit_by = "ip", algorithm = "sliding" }),
    }
  end

  describe("local policy, 4 workers", function()
    local gw

    lazy_setup(function()
      gw = helpers.start({ worker_processes = 4, shared_dicts = { rate_limit = "1m" },
                           lua_package_path = FIXTURES,
                           plugins = { "bundled", "rate-limiting", "rl-worker",
                                       { name = "rl-worker" } },
                           services = services("local") })
      helpers.eventually(function() assert.equal(4, #gw:worker_pids()) end)
    end)
    lazy_teardown(function() if gw then gw:stop() end end)

    local function burst(path)
      local got, workers = kit.burst(gw.port, path, 500, 100)
      assert.is_true(size(workers) >= 3, "the load reached " .. size(workers) .. " workers")
      return got
    end

    it("lets exactly 100 of 500 concurrent requests through (fixed, per minute)", function()
      kit.room_in_minute(25)
      assert.same({ ["200"] = 100, ["429"] = 400 }, burst("/fixed"))
    end)

    it("lets exactly 100 of 500 concurrent requests through (sliding, per hour)", function()
      room_in_hour(25)
      assert.same({ ["200"] = 100, ["429"] = 400 }, burst("/sliding"))
    end)
  end)

  describe("redis policy, two gateways", function()
    local red, gw1, gw2

    lazy_setup(function()
      red = helpers.redis_server()
      local conf = { worker_processes = 2, lua_package_path = FIXTURES,
                     plugins = { "bundled", "rate-limiting", "rl-worker",
                                 { name = "rl-worker" } },
                     services = services("redis", { host = "127.0.0.1", port = red.port }) }
      gw1 = helpers.start(conf)
      gw2 = helpers.start(conf)
    end)
    lazy_teardown(function()
      if gw1 then gw1:stop() end
      if gw2 then gw2:stop() end
      if red then red.stop() end
    end)

    local function both(path)
      local per, total, workers = kit.bursts({
        { port = gw1.port, path = path, n = 300, parallel = 100 },
        { port = gw2.port, path = path, n = 300, parallel = 100 },
      })
      -- each node answered all of its requests, one way or the other, on both its workers
      for i = 1, 2 do
        assert.equal(300, count(per[i], "200") + count(per[i], "429"))
        assert.equal(2, size(workers[i]))
      end
      return total
    end

    it("lets exactly 100 of 600 concurrent requests through (fixed, per minute)", function()
      kit.room_in_minute(25)
      assert.same({ ["200"] = 100, ["429"] = 500 }, both("/fixed"))
    end)

    it("lets exactly 100 of 600 concurrent requests through (sliding, per hour)", function()
      room_in_hour(25)
      assert.same({ ["200"] = 100, ["429"] = 500 }, both("/sliding"))
    end)
  end)
end)
