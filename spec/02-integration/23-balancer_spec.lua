-- Upstreams and targets (issue 6 item 1): a service whose host names an upstream is balanced
-- over its targets with Kong's algorithms — weighted round-robin, least-connections,
-- consistent hashing (header, cookie set by the gateway, ip, path, query arg) and latency
-- (peak EWMA) — each try is logged with its target, a dead target is retried on the next one,
-- all down → 502, no usable target → 503 with Kong's message; `moongate check` reports bad
-- upstreams and targets with paths. Every target is a real echo upstream, told apart by the
-- Host header it receives ("127.0.0.1:PORT", the target's own: Kong's rule).

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local fmt = string.format

local NO_PEER = "failure to get a peer from the ring-balancer"
local BAD_GATEWAY = "An invalid response was received from the upstream server"

local function target_of(up, weight)
  return { target = "127.0.0.1:" .. up.port, weight = weight }
end

-- A config with one upstream "pool" (fields merged) and a service "svc" on it at /lb.
local function conf_with(upstream, extra)
  upstream.name = upstream.name or "pool"
  local conf = {
    upstreams = { upstream },
    services = { { name = "svc", host = upstream.name, port = 80, retries = 5,
                   routes = { { paths = { "/lb" } } } } },
  }
  for k, v in pairs(extra or {}) do
    conf[k] = v
  end
  return conf
end

-- The port of the target that answered (from the Host it received).
local function answered_by(res)
  assert.equal(200, res.status, res.body)
  local body = assert(cjson.decode(res.body))
  return tonumber(body.headers.host:match(":(%d+)$"))
end

local function counts_of(ups)
  local c = {}
  for i, up in ipairs(ups) do
    c[i] = up:count()
  end
  return c
end

local function clear_all(ups)
  for _, up in ipairs(ups) do
    up:clear()
  end
end

-- Sends n requests on separate connections, one every `gap` seconds without waiting for
-- the answers (so slow ones overlap), then reads every answer.
local function staggered(gw, n, gap)
  local conns = {}
  for i = 1, n do
    local c = assert(helpers.connect(gw.port))
    assert(c:send("GET /lb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    conns[i] = c
    helpers.sleep(gap)
  end
  for i = 1, n do
    local res = assert(conns[i]:read_response())
    assert.equal(200, res.status)
    conns[i]:close()
  end
end

local function free_port()
  return helpers.get_free_port() -- nothing listens there: connections are refused
end

describe("balancer", function()
  local ups = {}

  lazy_setup(function()
    for i = 1, 4 do
      ups[i] = helpers.upstream()
    end
  end)

  lazy_teardown(function()
    for _, up in ipairs(ups) do
      up:stop()
    end
  end)

  describe("round-robin", function()
    local gw

    after_each(function()
      if gw then
        gw:stop()
        gw = nil
      end
    end)

    it("splits 300 requests 1:2:3 by weight", function()
      gw = helpers.start(conf_with({ targets = { target_of(ups[1], 10), target_of(ups[2], 20),
                                                 target_of(ups[3], 30) } }))
      clear_all(ups)
      for _ = 1, 300 do
        assert.equal(200, gw:get("/lb").status)
      end
      local c = counts_of(ups)
      for i, want in ipairs({ 50, 100, 150 }) do
        assert(math.abs(c[i] - want) <= want * 0.1,
               fmt("target %d: %d requests, expected %d ±10 %%", i, c[i], want))
      end
      assert.equal(0, c[4])
    end)

    it("sends each target its own Host, over its own keepalive connections", function()
      gw = helpers.start(conf_with({ targets = { target_of(ups[1]), target_of(ups[2]) } }))
      clear_all(ups)
      for _ = 1, 40 do
        assert.equal(200, gw:get("/lb").status)
      end
      -- a pooled connection handed to the other target would carry the other's Host
      for i = 1, 2 do
        local reqs = ups[i]:requests()
        assert.equal(20, #reqs)
        for _, req in ipairs(reqs) do
          assert.equal("127.0.0.1:" .. ups[i].port, req.headers.host)
        end
      end
    end)

    it("uses host_header as the Host when set", function()
      gw = helpers.start(conf_with({ host_header = "backend.example",
                                     targets = { target_of(ups[1]) } }))
      local res = gw:get("/lb")
      assert.equal(200, res.status)
      assert.equal("backend.example", cjson.decode(res.body).headers.host)
    end)

    it("gives a target of weight 0 nothing", function()
      gw = helpers.start(conf_with({ targets = { target_of(ups[1], 0), target_of(ups[2], 100) } }))
      clear_all(ups)
      for _ = 1, 20 do
        assert.equal(ups[2].port, answered_by(gw:get("/lb")))
      end
      assert.equal(0, ups[1]:count())
    end)

    it("answers 503 with Kong's message when every weight is 0", function()
      gw = helpers.start(conf_with({ targets = { target_of(ups[1], 0), target_of(ups[2], 0) } }))
      clear_all(ups)
      local res = gw:get("/lb")
      assert.equal(503, res.status)
      assert.same({ message = NO_PEER }, cjson.decode(res.body))
      assert.equal(0, ups[1]:count() + ups[2]:count())
      assert.matches('upstream "pool": no target can take traffic', gw:error_log(), 1, true)
    end)

    it("answers 503 when the upstream has no target", function()
      gw = helpers.start(conf_with({}))
      local res = gw:get("/lb")
      assert.equal(503, res.status)
      assert.same({ message = NO_PEER }, cjson.decode(res.body))
    end)

    it("retries a dead target on the next one, logging each try with its target", function()
      local dead = free_port()
      gw = helpers.start(conf_with({ targets = { { target = "127.0.0.1:" .. dead },
                                                 target_of(ups[1]) } }))
      clear_all(ups)
      for _ = 1, 6 do
        assert.equal(ups[1].port, answered_by(gw:get("/lb")))
      end
      assert.equal(6, ups[1]:count())
      local log = gw:error_log()
      assert.matches(fmt('upstream connect failed %%(upstream "pool" target 127%%.0%%.0%%.1:%d, '
                         .. '127%%.0%%.0%%.1:%d, try 1%%)', dead, dead), log)
      -- the access log's upstream_addr lists the tries (nginx's "a, b"), the one that
      -- answered last
      local lines = helpers.eventually(function()
        local l = gw:access_log_lines()
        assert.equal(6, #l)
        return l
      end)
      local good, dead_first = "127.0.0.1:" .. ups[1].port, 0
      for _, line in ipairs(lines) do
        assert.equal(200, line.status)
        if line.tries == 2 then
          dead_first = dead_first + 1
          assert.equal("127.0.0.1:" .. dead .. ", " .. good, line.upstream_addr)
        else
          assert.equal(1, line.tries)
          assert.equal(good, line.upstream_addr)
        end
      end
      assert.is_true(dead_first >= 1, "no request tried the dead target first")
    end)

    it("answers 502 when every target is down, after trying them in turn", function()
      local d1, d2 = free_port(), free_port()
      gw = helpers.start(conf_with({ targets = { { target = "127.0.0.1:" .. d1 },
                                                 { target = "127.0.0.1:" .. d2 } } }))
      local res = gw:get("/lb")
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, cjson.decode(res.body))
      local log = gw:error_log()
      local tried = {}
      for port, try in log:gmatch('target 127%.0%.0%.1:(%d+), [^,]+, try (%d+)%)') do
        tried[tonumber(try)] = tonumber(port)
      end
      -- retries = 5: six tries, never the same target twice in a row
      assert.equal(6, #tried)
      for i = 2, 6 do
        assert.not_equal(tried[i - 1], tried[i])
      end
    end)

    it("balances a top-level target list (targets with `upstream:`)", function()
      gw = helpers.start(conf_with({}, {
        targets = { { upstream = "pool", target = "127.0.0.1:" .. ups[1].port },
                    { upstream = { name = "pool" }, target = "127.0.0.1:" .. ups[2].port } },
      }))
      clear_all(ups)
      for _ = 1, 10 do
        assert.equal(200, gw:get("/lb").status)
      end
      assert.same({ 5, 5 }, { ups[1]:count(), ups[2]:count() })
    end)
  end)

  describe("least-connections", function()
    it("sends a slow target fewer requests (round-robin would split them evenly)", function()
      ups[1]:set_mode("delay:300")
      finally(function() ups[1]:set_mode(nil) end)
      local results = {}
      for _, alg in ipairs({ "least-connections", "round-robin" }) do
        local gw = helpers.start(conf_with({ algorithm = alg,
                                             targets = { target_of(ups[1]), target_of(ups[2]) } }))
        clear_all(ups)
        staggered(gw, 40, 0.03)
        results[alg] = counts_of({ ups[1], ups[2] })
        gw:stop()
      end
      local lc, rr = results["least-connections"], results["round-robin"]
      assert.same({ 20, 20 }, rr)
      assert(lc[1] + lc[2] == 40)
      assert(lc[1] <= 12, fmt("slow target got %d of 40", lc[1]))
    end)
  end)

  describe("latency (peak EWMA)", function()
    it("prefers the faster target", function()
      ups[1]:set_mode("delay:150")
      finally(function() ups[1]:set_mode(nil) end)
      local gw = helpers.start(conf_with({ algorithm = "latency",
                                           targets = { target_of(ups[1]), target_of(ups[2]) } }))
      finally(function() gw:stop() end)
      clear_all(ups)
      for _ = 1, 30 do
        assert.equal(200, gw:get("/lb").status)
      end
      local c = counts_of({ ups[1], ups[2] })
      assert(c[1] >= 1 and c[1] <= 2, fmt("slow target got %d of 30", c[1]))
      assert.equal(30 - c[1], c[2])
    end)
  end)

  describe("consistent-hashing", function()
    local function hash_conf(fields, n)
      local targets = {}
      for i = 1, n or 3 do
        targets[i] = target_of(ups[i])
      end
      fields.algorithm = "consistent-hashing"
      fields.targets = targets
      return fields
    end

    it("keeps a header value on one target, and spreads values", function()
      local gw = helpers.start(conf_with(hash_conf({ hash_on = "header",
                                                    hash_on_header = "X-User" })))
      finally(function() gw:stop() end)
      local seen = {}
      for u = 1, 30 do
        local port = answered_by(gw:get("/lb", { headers = { ["X-User"] = "user-" .. u } }))
        for _ = 1, 3 do
          local res = gw:get("/lb", { headers = { ["x-user"] = "user-" .. u } })
          assert.equal(port, answered_by(res))
        end
        seen[port] = (seen[port] or 0) + 1
      end
      local n = 0
      for _ in pairs(seen) do
        n = n + 1
      end
      assert.equal(3, n)
    end)

    it("falls back to hash_fallback when the header is absent", function()
      local gw = helpers.start(conf_with(hash_conf({ hash_on = "header", hash_on_header = "X-User",
                                                    hash_fallback = "query_arg",
                                                    hash_fallback_query_arg = "team" })))
      finally(function() gw:stop() end)
      for t = 1, 10 do
        local port = answered_by(gw:get("/lb?a=1&team=t" .. t))
        for _ = 1, 3 do
          assert.equal(port, answered_by(gw:get("/lb?team=t" .. t .. "&b=2")))
        end
      end
    end)

    it("sets the hash cookie when absent and sticks to it", function()
      local gw = helpers.start(conf_with(hash_conf({ hash_on = "cookie", hash_on_cookie = "lb",
                                                    hash_on_cookie_path = "/lb" })))
      finally(function() gw:stop() end)
      local seen = {}
      for _ = 1, 20 do
        local res = gw:get("/lb")
        local set = res.headers["set-cookie"]
        assert.is_string(set)
        local value = set:match("^lb=([0-9a-f%-]+); Path=/lb; HttpOnly$")
        assert.is_string(value, set)
        assert.equal(36, #value)
        local port = answered_by(res)
        for _ = 1, 3 do
          local again = gw:get("/lb", { headers = { Cookie = "a=b; lb=" .. value .. "; c=d" } })
          assert.equal(port, answered_by(again))
          assert.is_nil(again.headers["set-cookie"])
        end
        seen[port] = true
      end
      local n = 0
      for _ in pairs(seen) do
        n = n + 1
      end
      assert(n >= 2, "20 fresh cookies all landed on one target")
    end)

    it("hashes on the forwarded client ip", function()
      local gw = helpers.start(conf_with(hash_conf({ hash_on = "ip" }),
                                         { trusted_ips = { "127.0.0.1/32" } }))
      finally(function() gw:stop() end)
      local seen = {}
      for i = 1, 30 do
        local ip = "10.0.0." .. i
        local port = answered_by(gw:get("/lb", { headers = { ["X-Real-IP"] = ip } }))
        for _ = 1, 2 do
          assert.equal(port, answered_by(gw:get("/lb", { headers = { ["X-Real-IP"] = ip } })))
        end
        seen[port] = true
      end
      local n = 0
      for _ in pairs(seen) do
        n = n + 1
      end
      assert.equal(3, n)
    end)

    it("hashes on the path", function()
      local gw = helpers.start(conf_with(hash_conf({ hash_on = "path" })))
      finally(function() gw:stop() end)
      for i = 1, 10 do
        local port = answered_by(gw:get("/lb/item" .. i))
        assert.equal(port, answered_by(gw:get("/lb/item" .. i .. "?x=" .. i)))
      end
    end)

    it("moves only about 1/N of the keys when a target is removed (reload)", function()
      local conf = conf_with(hash_conf({ hash_on = "header", hash_on_header = "X-Key" }, 4))
      local gw = helpers.start(conf)
      finally(function() gw:stop() end)
      local KEYS = 200
      local before = {}
      for k = 1, KEYS do
        before[k] = answered_by(gw:get("/lb", { headers = { ["X-Key"] = "key-" .. k } }))
      end
      local removed = ups[3].port
      -- the removed target's keys; one of them shows when the reload took effect
      local probe
      for k = 1, KEYS do
        if before[k] == removed then
          probe = k
        end
      end
      assert.is_number(probe)
      table.remove(conf.upstreams[1].targets, 3)
      gw:reload(conf)
      helpers.eventually(function()
        local port = answered_by(gw:get("/lb", { headers = { ["X-Key"] = "key-" .. probe } }))
        assert.not_equal(removed, port)
      end, 10)
      local moved, wrong = 0, 0
      for k = 1, KEYS do
        local now = answered_by(gw:get("/lb", { headers = { ["X-Key"] = "key-" .. k } }))
        if now ~= before[k] then
          moved = moved + 1
          if before[k] ~= removed then
            wrong = wrong + 1
          end
        end
      end
      assert.equal(0, wrong) -- keys of the remaining targets stay where they were
      assert(moved >= KEYS / 4 * 0.5 and moved <= KEYS / 4 * 1.6,
             fmt("%d of %d keys moved, expected about %d", moved, KEYS, KEYS / 4))
    end)
  end)

  describe("moongate check", function()
    local function problems(conf)
      local rc, lines = helpers.check(conf)
      return rc, table.concat(lines, "\n")
    end

    local cases = {
      { "an unknown algorithm", { algorithm = "random" },
        'upstreams[0].algorithm: expected one of "round-robin", "least-connections", '
        .. '"consistent-hashing", "latency"' },
      { "slots out of range", { slots = 5 }, "upstreams[0].slots: must be at least 10" },
      { "slots too many", { slots = 70000 }, "upstreams[0].slots: must be at most 65536" },
      { "hash_on header without its name", { hash_on = "header" },
        'upstreams[0].hash_on_header: required when hash_on is "header"' },
      { "hash_on cookie without its name", { hash_on = "cookie" },
        'upstreams[0].hash_on_cookie: required when hash_on is "cookie"' },
      { "hash_on query_arg without its name", { hash_on = "query_arg" },
        'upstreams[0].hash_on_query_arg: required when hash_on is "query_arg"' },
      { "a fallback without hash_on", { hash_fallback = "ip" },
        'upstreams[0].hash_fallback: must be "none" when hash_on is "none"' },
      { "a fallback after a cookie", { hash_on = "cookie", hash_on_cookie = "c",
                                       hash_fallback = "ip" },
        'upstreams[0].hash_fallback: must be "none" when hash_on is "cookie"' },
      { "the same input twice", { hash_on = "ip", hash_fallback = "ip" },
        "upstreams[0].hash_fallback: must differ from hash_on" },
      { "the same header twice", { hash_on = "header", hash_on_header = "X-A",
                                   hash_fallback = "header", hash_fallback_header = "x-a" },
        "upstreams[0].hash_fallback_header: values of these fields must be distinct: "
        .. "'hash_on_header', 'hash_fallback_header'" },
      { "hash_on uri_capture without its name", { hash_on = "uri_capture" },
        'upstreams[0].hash_on_uri_capture: required when hash_on is "uri_capture"' },
      { "hash_fallback uri_capture without its name", { hash_on = "ip",
                                                        hash_fallback = "uri_capture" },
        'upstreams[0].hash_fallback_uri_capture: required when hash_fallback is "uri_capture"' },
      { "consumer twice", { hash_on = "consumer", hash_fallback = "consumer" },
        "upstreams[0].hash_fallback: must differ from hash_on" },
      { "the same capture twice", { hash_on = "uri_capture", hash_on_uri_capture = "id",
                                    hash_fallback = "uri_capture",
                                    hash_fallback_uri_capture = "id" },
        "upstreams[0].hash_fallback_uri_capture: values of these fields must be distinct: "
        .. "'hash_on_uri_capture', 'hash_fallback_uri_capture'" },
      { "the same query argument twice", { hash_on = "query_arg", hash_on_query_arg = "u",
                                           hash_fallback = "query_arg",
                                           hash_fallback_query_arg = "u" },
        "upstreams[0].hash_fallback_query_arg: values of these fields must be distinct: "
        .. "'hash_on_query_arg', 'hash_fallback_query_arg'" },
      { "an unknown hash input", { hash_on = "body" }, "upstreams[0].hash_on: expected one of" },
      { "a bad cookie path", { hash_on = "cookie", hash_on_cookie = "c",
                               hash_on_cookie_path = "x" },
        'upstreams[0].hash_on_cookie_path: must start with "/"' },
      { "a bad target", { targets = { { target = "bad host:80" } } },
        "upstreams[0].targets[0].target: Invalid target ('bad host:80'); not a valid hostname "
        .. "or ip address" },
      { "a bad target port", { targets = { { target = "127.0.0.1:99999" } } },
        "upstreams[0].targets[0].target: Invalid target ('127.0.0.1:99999'); not a valid "
        .. "hostname or ip address" },
      { "a weight out of range", { targets = { { target = "127.0.0.1:80", weight = 70000 } } },
        "upstreams[0].targets[0].weight: must be at most 65535" },
      { "a negative weight", { targets = { { target = "127.0.0.1:80", weight = -1 } } },
        "upstreams[0].targets[0].weight: must be at least 0" },
      { "a target without target", { targets = { { weight = 5 } } },
        "upstreams[0].targets[0].target: required" },
      { "a duplicate target", { targets = { { target = "127.0.0.1" },
                                            { target = "127.0.0.1:8000" } } },
        'upstreams[0].targets[1].target: duplicate target "127.0.0.1:8000" in upstream "pool"' },
      { "a nested target naming an upstream", { targets = { { target = "127.0.0.1",
                                                              upstream = "pool" } } },
        "upstreams[0].targets[0].upstream: not allowed on a target nested under an upstream" },
      { "an unknown field", { foo = 1 }, "upstreams[0].foo: unknown field" },
      { "an unknown client certificate", { client_certificate = { id = "x" } },
        "upstreams[0].client_certificate: no certificate has id 'x'" },
    }
    for _, case in ipairs(cases) do
      it("reports " .. case[1], function()
        local rc, out = problems(conf_with(case[2]))
        assert.equal(1, rc, out)
        assert.matches(case[3], out, 1, true)
      end)
    end

    it("reports an upstream without a name, duplicate names and unknown references", function()
      local rc, out = problems({
        upstreams = { { algorithm = "latency" }, { name = "a" }, { name = "a" } },
        targets = { { target = "127.0.0.1:1", upstream = "nope" }, { target = "127.0.0.1:2" } },
      })
      assert.equal(1, rc)
      assert.matches("upstreams[0].name: required", out, 1, true)
      assert.matches('upstreams[2].name: duplicate name "a"', out, 1, true)
      assert.matches('targets[0].upstream: no upstream named "nope"', out, 1, true)
      assert.matches("targets[1].upstream: required", out, 1, true)
    end)

    it("accepts Kong's full upstream entity, and a service host naming no upstream", function()
      local rc, out = problems(conf_with({
        algorithm = "consistent-hashing", hash_on = "header", hash_on_header = "x-a",
        hash_fallback = "cookie", hash_on_cookie = "sess", hash_on_cookie_path = "/",
        slots = 10000, tags = { "t" }, use_srv_name = false,
        healthchecks = { active = { type = "http" } },
        targets = { { target = "localhost:8080", weight = 65535, tags = { "x" } },
                    { target = "[::1]:80", weight = 0 }, { target = "127.0.0.1" } },
      }))
      assert.equal(0, rc, out)
      -- a host naming no upstream is a name for the resolver, which the workers look up
      rc, out = problems({ services = { { name = "s", host = "no-such-upstream.invalid",
                                          routes = { { paths = { "/" } } } } } })
      assert.equal(0, rc, out)
    end)
  end)
end)
