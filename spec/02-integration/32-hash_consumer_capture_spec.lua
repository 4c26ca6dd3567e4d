-- Consistent hashing on the authenticated consumer and on a named capture of the route's regex
-- path (issue 6 item 2, Kong's `hash_on: consumer` and `hash_on: uri_capture` with
-- `hash_on_uri_capture`, the same for `hash_fallback`). The consumer is known once the access
-- phase ran (key-auth here), and the target is picked after it; a request without one, or
-- whose path has no such capture, falls back to `hash_fallback`. Targets are real echo
-- upstreams told apart by the Host they receive (the target's own, Kong's rule).

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local NTARGETS = 3

local function answered_by(res)
  assert.equal(200, res.status, res.body)
  local body = assert(cjson.decode(res.body))
  return tonumber(body.headers.host:match(":(%d+)$"))
end

-- The distinct targets `send(i)` for i = 1..n reached, as a set and its size.
local function targets_of(n, send)
  local seen, count = {}, 0
  for i = 1, n do
    local port = answered_by(send(i))
    if not seen[port] then
      seen[port], count = true, count + 1
    end
  end
  return seen, count
end

describe("hash_on", function()
  local ups = {}
  local gw

  lazy_setup(function()
    for i = 1, NTARGETS do ups[i] = helpers.upstream() end
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    for _, up in ipairs(ups) do up:stop() end
  end)

  local function targets()
    local t = {}
    for i, up in ipairs(ups) do t[i] = { target = "127.0.0.1:" .. up.port } end
    return t
  end

  describe("consumer", function()
    lazy_setup(function()
      local consumers = {}
      for i = 1, 12 do
        consumers[i] = { username = "user" .. i, keyauth_credentials = { { key = "key" .. i } } }
      end
      gw = helpers.start({
        consumers = consumers,
        upstreams = { { name = "pool", algorithm = "consistent-hashing", hash_on = "consumer",
                        hash_fallback = "header", hash_fallback_header = "X-Fallback",
                        targets = targets() } },
        services = { { name = "svc", host = "pool", routes = {
          { name = "auth", paths = { "/auth" }, plugins = { { name = "key-auth" } } },
          { name = "open", paths = { "/open" } },
        } } },
      })
    end)

    lazy_teardown(function()
      gw:stop()
      gw = nil
    end)

    it("sends every request of one consumer to the same target", function()
      for i = 1, 3 do
        local _, n = targets_of(8, function(j)
          -- the fallback header changes on every request: only the consumer keys the pick
          return gw:get("/auth/x" .. j, { headers = { apikey = "key" .. i,
                                                     ["X-Fallback"] = "v" .. j } })
        end)
        assert.equal(1, n, "consumer user" .. i .. " reached " .. n .. " targets")
      end
    end)

    it("spreads different consumers over the targets", function()
      local _, n = targets_of(12, function(i)
        return gw:get("/auth", { headers = { apikey = "key" .. i } })
      end)
      assert.is_true(n >= 2, "12 consumers all reached one target")
    end)

    it("falls back to hash_fallback without a consumer", function()
      local _, n = targets_of(8, function(j)
        return gw:get("/open/x" .. j, { headers = { ["X-Fallback"] = "same" } })
      end)
      assert.equal(1, n)
      local _, spread = targets_of(12, function(j)
        return gw:get("/open", { headers = { ["X-Fallback"] = "v" .. j } })
      end)
      assert.is_true(spread >= 2, "12 fallback keys all reached one target")
    end)
  end)

  describe("uri_capture", function()
    lazy_setup(function()
      gw = helpers.start({
        upstreams = { { name = "pool", algorithm = "consistent-hashing", hash_on = "uri_capture",
                        hash_on_uri_capture = "item", hash_fallback = "uri_capture",
                        hash_fallback_uri_capture = "shelf", targets = targets() } },
        services = { { name = "svc", host = "pool", routes = {
          { name = "items", paths = { [[~/items/(?<item>[a-z0-9]+)]] } },
          { name = "shelves", paths = { [[~/shelves/(?<shelf>[a-z0-9]+)]] } },
        } } },
      })
    end)

    lazy_teardown(function()
      gw:stop()
      gw = nil
    end)

    it("sends every request with the same capture to the same target, whatever follows",
       function()
      for _, item in ipairs({ "a1", "b2", "c3" }) do
        local _, n = targets_of(8, function(j)
          return gw:get("/items/" .. item .. "/part" .. j)
        end)
        assert.equal(1, n, "item " .. item .. " reached " .. n .. " targets")
      end
    end)

    it("spreads different captures over the targets", function()
      local _, n = targets_of(12, function(i) return gw:get("/items/i" .. i) end)
      assert.is_true(n >= 2, "12 items all reached one target")
    end)

    it("falls back to hash_fallback's capture when the route has no hash_on group", function()
      for _, shelf in ipairs({ "s1", "s2" }) do
        local _, n = targets_of(8, function(j)
          return gw:get("/shelves/" .. shelf .. "/p" .. j)
        end)
        assert.equal(1, n, "shelf " .. shelf .. " reached " .. n .. " targets")
      end
      local _, n = targets_of(12, function(i) return gw:get("/shelves/s" .. i) end)
      assert.is_true(n >= 2, "12 shelves all reached one target")
    end)
  end)
end)
