-- Health checks of upstream targets (issue 6 item 2), passive and active: Kong's
-- `healthchecks` record is parsed with Kong's defaults and `moongate check` reports bad
-- fields with paths. Live traffic is counted per target (statuses, connect failures,
-- timeouts) against the passive thresholds, and a target that crosses unhealthy gets no more
-- traffic — the state is shared by the workers, so the count is exact across them — until
-- the configuration is reloaded (passive checks alone never bring a target back, as in Kong)
-- or active probes (http GET of http_path, or tcp connect, one worker per interval) count it
-- healthy again. Every transition is in the error log; all targets unhealthy, or less than
-- `threshold` % of the weight healthy → 503 with Kong's message. Targets are real echo
-- upstreams made to fail with their default mode (PUT /_upstream/mode), or stopped.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local fmt = string.format

local NO_PEER = "failure to get a peer from the ring-balancer"

local function target_of(up)
  return { target = "127.0.0.1:" .. up.port }
end

-- A config with one upstream "pool" (its targets, passive unhealthy thresholds) and a
-- service on it at /lb.
local function conf_with(targets, unhealthy, extra, svc)
  local conf = {
    upstreams = { { name = "pool", targets = targets,
                    healthchecks = unhealthy and { passive = { unhealthy = unhealthy } } } },
    services = { { name = "svc", host = "pool", port = 80, retries = 5,
                   routes = { { paths = { "/lb" } } } } },
  }
  for k, v in pairs(svc or {}) do
    conf.services[1][k] = v
  end
  for k, v in pairs(extra or {}) do
    conf[k] = v
  end
  return conf
end

local function count_in(s, needle)
  local n, at = 0, 1
  while true do
    local i = s:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, i + #needle
  end
end

describe("passive health checks", function()
  local good, bad
  local gw

  lazy_setup(function()
    good = helpers.upstream()
    bad = helpers.upstream()
  end)

  lazy_teardown(function()
    good:stop()
    bad:stop()
  end)

  before_each(function()
    good:set_mode(nil)
    bad:set_mode(nil)
    good:clear()
    bad:clear()
  end)

  after_each(function()
    if gw then
      gw:stop()
      gw = nil
    end
  end)

  it("counts nothing with Kong's defaults: a failing target keeps its share", function()
    gw = helpers.start(conf_with({ target_of(good), target_of(bad) }, nil))
    bad:set_mode("status:500")
    local statuses = {}
    for _ = 1, 20 do
      local st = gw:get("/lb").status
      statuses[st] = (statuses[st] or 0) + 1
    end
    assert.equal(10, statuses[500])
    assert.equal(10, statuses[200])
    assert.equal(10, bad:count())
    assert.no.matches("is now unhealthy", gw:error_log(), 1, true)
  end)

  it("takes a target out after http_failures failing statuses, and says so", function()
    gw = helpers.start(conf_with({ target_of(good), target_of(bad) }, { http_failures = 3 }))
    bad:set_mode("status:500")
    local fails = 0
    for _ = 1, 30 do
      local res = gw:get("/lb")
      if res.status == 500 then
        fails = fails + 1
      else
        assert.equal(200, res.status)
      end
    end
    assert.equal(3, fails)
    assert.equal(3, bad:count())
    assert.equal(27, good:count())
    local log = gw:error_log()
    assert.matches(fmt("upstream pool target 127.0.0.1:%d is now unhealthy (3 http failures, "
                       .. "last status 500)", bad.port), log, 1, true)
    assert.equal(1, count_in(log, "is now unhealthy"))
  end)

  it("counts only the listed statuses (unhealthy.http_statuses)", function()
    gw = helpers.start(conf_with({ target_of(good), target_of(bad) },
                                 { http_failures = 2, http_statuses = { 502 } }))
    bad:set_mode("status:500") -- not listed: never counted
    for _ = 1, 10 do
      gw:get("/lb")
    end
    assert.equal(5, bad:count())
    bad:set_mode("status:502")
    for _ = 1, 10 do
      gw:get("/lb")
    end
    assert.equal(7, bad:count())
    assert.matches(fmt("target 127.0.0.1:%d is now unhealthy (2 http failures, last status "
                       .. "502)", bad.port), gw:error_log(), 1, true)
  end)

  it("takes out a target that stopped (tcp_failures), retries keep answers 200", function()
    local doomed = helpers.upstream()
    gw = helpers.start(conf_with({ target_of(good), target_of(doomed) }, { tcp_failures = 2 }))
    for _ = 1, 4 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.equal(2, doomed:count())
    local port = doomed.port
    doomed:stop()
    for _ = 1, 20 do
      assert.equal(200, gw:get("/lb").status)
    end
    local log = gw:error_log()
    assert.matches(fmt("upstream pool target 127.0.0.1:%d is now unhealthy (2 tcp failures)",
                       port), log, 1, true)
    -- two refused connects, then no more tries on it
    assert.equal(2, count_in(log, fmt("target 127.0.0.1:%d, ", port)))
  end)

  it("takes out a target that times out (timeouts)", function()
    -- retries: 0, or a timed-out GET would be retried on the good target (28-retries)
    gw = helpers.start(conf_with({ target_of(good), target_of(bad) }, { timeouts = 2 }, nil,
                                 { read_timeout = 200, retries = 0 }))
    bad:set_mode("delay:2000")
    local timeouts = 0
    for _ = 1, 12 do
      local st = gw:get("/lb").status
      if st == 504 then
        timeouts = timeouts + 1
      else
        assert.equal(200, st)
      end
    end
    assert.equal(2, timeouts)
    assert.matches(fmt("target 127.0.0.1:%d is now unhealthy (2 timeouts)", bad.port),
                   gw:error_log(), 1, true)
  end)

  it("shares the counts across 2 workers: exactly http_failures requests reach it", function()
    gw = helpers.start(conf_with({ target_of(good), target_of(bad) }, { http_failures = 4 },
                                 { worker_processes = 2 }))
    bad:set_mode("status:503")
    -- a fresh connection each: the kernel spreads them over both workers
    for _ = 1, 40 do
      local res = gw:request({ method = "GET", path = "/lb",
                               headers = { Connection = "close" } })
      assert.is_true(res.status == 200 or res.status == 503)
    end
    assert.equal(4, bad:count())
    assert.equal(1, count_in(gw:error_log(), "is now unhealthy"))
  end)

  it("answers 503 with Kong's message once every target is unhealthy; reload recovers",
     function()
    local conf = conf_with({ target_of(good), target_of(bad) }, { http_failures = 1 })
    gw = helpers.start(conf)
    good:set_mode("status:500")
    bad:set_mode("status:500")
    assert.equal(500, gw:get("/lb").status)
    assert.equal(500, gw:get("/lb").status)
    for _ = 1, 5 do
      local res = gw:get("/lb")
      assert.equal(503, res.status)
      assert.same({ message = NO_PEER }, cjson.decode(res.body))
    end
    assert.equal(1, good:count())
    assert.equal(1, bad:count())
    assert.equal(2, count_in(gw:error_log(), "is now unhealthy"))
    -- the targets recover; passive checks alone keep them out until a reload
    good:set_mode(nil)
    bad:set_mode(nil)
    assert.equal(503, gw:get("/lb").status)
    gw:reload(conf)
    helpers.eventually(function()
      assert.equal(200, gw:get("/lb").status)
    end)
    for _ = 1, 10 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.is_true(good:count() > 1 and bad:count() > 1)
  end)

  it("answers 503 once under `threshold` % of the weight is healthy", function()
    local conf = conf_with({ target_of(good), target_of(bad) }, { http_failures = 1 })
    conf.upstreams[1].healthchecks.threshold = 60
    gw = helpers.start(conf)
    bad:set_mode("status:500")
    assert.equal(200, gw:get("/lb").status)
    assert.equal(500, gw:get("/lb").status)
    -- 50 % healthy < 60 %: the whole upstream is unhealthy, the good target included
    for _ = 1, 5 do
      local res = gw:get("/lb")
      assert.equal(503, res.status)
      assert.same({ message = NO_PEER }, cjson.decode(res.body))
    end
    assert.equal(1, good:count())
  end)
end)

-- The requests an echo upstream received on `path`: probes on theirs, traffic on "/" (the
-- route strips /lb).
local function on_path(up, path)
  local n = 0
  for _, req in ipairs(up:requests()) do
    if req.path == path then n = n + 1 end
  end
  return n
end

describe("active health checks", function()
  local good, bad
  local gw

  lazy_setup(function()
    good = helpers.upstream()
    bad = helpers.upstream()
  end)

  lazy_teardown(function()
    good:stop()
    bad:stop()
  end)

  before_each(function()
    good:set_mode(nil)
    bad:set_mode(nil)
    good:clear()
    bad:clear()
  end)

  after_each(function()
    if gw then
      gw:stop()
      gw = nil
    end
  end)

  local function with_active(active, passive, extra)
    local conf = conf_with({ target_of(good), target_of(bad) }, nil, extra)
    conf.upstreams[1].healthchecks = { active = active, passive = passive }
    return conf
  end

  it("probes bring back a target passive checks took out", function()
    gw = helpers.start(with_active({ http_path = "/health",
                                     healthy = { successes = 2 },
                                     unhealthy = { interval = 0.1 } },
                                   { unhealthy = { http_failures = 2 } }))
    bad:set_mode("status:500")
    for _ = 1, 10 do
      gw:get("/lb")
    end
    assert.equal(2, on_path(bad, "/"))
    -- probed while unhealthy: the probe's 500 is not counted (active http_failures 0)
    helpers.eventually(function()
      assert.is_true(on_path(bad, "/health") >= 2)
    end)
    local probe
    for _, req in ipairs(bad:requests()) do
      if req.path == "/health" then probe = req end
    end
    assert.equal("GET", probe.method)
    assert.equal("127.0.0.1:" .. bad.port, probe.headers.host)
    assert.equal(2, on_path(bad, "/"))
    bad:set_mode(nil)
    helpers.eventually(function()
      assert.matches(fmt("target 127.0.0.1:%d is now healthy (2 successes, last status 200) "
                         .. "by active checks", bad.port), gw:error_log(), 1, true)
    end)
    for _ = 1, 10 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.equal(7, on_path(bad, "/"))
  end)

  it("probes take out a failing target with no traffic, and bring it back", function()
    gw = helpers.start(with_active({ http_path = "/hc",
                                     healthy = { interval = 0.1, successes = 1 },
                                     unhealthy = { interval = 0.1, http_failures = 2 } }))
    bad:set_mode("status:503")
    helpers.eventually(function()
      assert.matches(fmt("target 127.0.0.1:%d is now unhealthy (2 http failures, last status "
                         .. "503) by active checks", bad.port), gw:error_log(), 1, true)
    end)
    for _ = 1, 10 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.equal(0, on_path(bad, "/"))
    bad:set_mode(nil)
    helpers.eventually(function()
      assert.matches(fmt("target 127.0.0.1:%d is now healthy (1 successes, last status 200) "
                         .. "by active checks", bad.port), gw:error_log(), 1, true)
    end)
    for _ = 1, 10 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.equal(5, on_path(bad, "/"))
  end)

  it("probes once per interval across 2 workers", function()
    gw = helpers.start(with_active({ http_path = "/hc", healthy = { interval = 0.5 } }, nil,
                                   { worker_processes = 2 }))
    helpers.eventually(function()
      assert.is_true(on_path(good, "/hc") >= 2)
    end)
    -- both workers tick every 0.25 s; claiming the target in the shared zone keeps it at one
    -- probe per interval, at most 5 in 2 s (each worker probing would make about 8). Only an
    -- upper bound: a loaded machine probes less, never more.
    local n = on_path(good, "/hc")
    helpers.sleep(2)
    local probes = on_path(good, "/hc") - n
    assert.is_true(probes >= 1 and probes <= 6, probes .. " probes in 2 s")
  end)

  it("tcp probes count refused connects (tcp_failures)", function()
    local doomed = helpers.upstream()
    local port = doomed.port
    local conf = conf_with({ target_of(good), target_of(doomed) })
    conf.upstreams[1].healthchecks = { active = { type = "tcp",
                                                  healthy = { interval = 0.1 },
                                                  unhealthy = { tcp_failures = 2 } } }
    gw = helpers.start(conf)
    doomed:stop()
    helpers.eventually(function()
      assert.matches(fmt("target 127.0.0.1:%d is now unhealthy (2 tcp failures) by active "
                         .. "checks", port), gw:error_log(), 1, true)
    end)
    for _ = 1, 10 do
      assert.equal(200, gw:get("/lb").status)
    end
    assert.no.matches(fmt("target 127.0.0.1:%d, ", port), gw:error_log(), 1, true)
  end)

  it("counts probes that time out (timeouts)", function()
    gw = helpers.start(with_active({ timeout = 0.2, healthy = { interval = 0.1 },
                                     unhealthy = { timeouts = 2 } }))
    bad:set_mode("delay:3000")
    helpers.eventually(function()
      assert.matches(fmt("target 127.0.0.1:%d is now unhealthy (2 timeouts) by active checks",
                         bad.port), gw:error_log(), 1, true)
    end)
  end)
end)

describe("healthchecks in moongate check", function()
  local function problems(hc)
    local rc, lines = helpers.check({ upstreams = { { name = "pool", healthchecks = hc } } })
    return rc, table.concat(lines, "\n")
  end

  it("accepts Kong's full default record", function()
    local rc, out = problems({
      threshold = 0,
      active = {
        type = "http", http_path = "/", timeout = 1, concurrency = 10,
        https_verify_certificate = true,
        healthy = { interval = 0, successes = 0, http_statuses = { 200, 302 } },
        unhealthy = { interval = 0, http_failures = 0, tcp_failures = 0, timeouts = 0,
                      http_statuses = { 429, 404, 500, 501, 502, 503, 504, 505 } },
      },
      passive = {
        type = "http",
        healthy = { successes = 0, http_statuses = { 200, 201, 202, 203, 204, 205, 206, 207,
                                                     208, 226, 300, 301, 302, 303, 304, 305,
                                                     306, 307, 308 } },
        unhealthy = { http_failures = 0, tcp_failures = 0, timeouts = 0,
                      http_statuses = { 429, 500, 503 } },
      },
    })
    assert.equal(0, rc, out)
  end)

  local P = "upstreams[0].healthchecks."
  local cases = {
    { "a count out of range", { passive = { unhealthy = { http_failures = 256 } } },
      P .. "passive.unhealthy.http_failures: must be at most 255" },
    { "a negative count", { passive = { healthy = { successes = -1 } } },
      P .. "passive.healthy.successes: must be at least 0" },
    { "a bad status", { passive = { unhealthy = { http_statuses = { 500, 42 } } } },
      P .. "passive.unhealthy.http_statuses[1]: must be between 100 and 999" },
    { "a status that is not a number", { active = { healthy = { http_statuses = { "ok" } } } },
      P .. "active.healthy.http_statuses[0]: expected an integer" },
    { "an unknown probe type", { active = { type = "udp" } },
      P .. 'active.type: expected one of "tcp", "http", "https", "grpc", "grpcs"' },
    { "a bad timeout", { active = { timeout = "soon" } },
      P .. "active.timeout: expected a number" },
    { "a zero concurrency", { active = { concurrency = 0 } },
      P .. "active.concurrency: must be greater than 0" },
    { "a threshold over 100", { threshold = 101 }, P .. "threshold: must be at most 100" },
    { "an interval too long", { active = { unhealthy = { interval = 70000 } } },
      P .. "active.unhealthy.interval: must be at most 65535" },
    { "an unknown field", { passive = { unhealthy = { failures = 1 } } },
      P .. "passive.unhealthy.failures: unknown field" },
    { "an interval on the passive side", { passive = { healthy = { interval = 1 } } },
      P .. "passive.healthy.interval: unknown field" },
    { "a bad http_path", { active = { http_path = "health" } },
      P .. 'active.http_path: must start with "/"' },
    { "grpc probes (not yet)", { active = { type = "grpc", healthy = { interval = 5 } } },
      P .. 'active.type: only "http", "https" and "tcp" probes are supported yet' },
    { "an IP address as https_sni", { active = { type = "https", https_sni = "127.0.0.1" } },
      P .. "active.https_sni: must be a host name, not an IP address" },
  }
  for _, case in ipairs(cases) do
    it("reports " .. case[1], function()
      local rc, out = problems(case[2])
      assert.equal(1, rc, out)
      assert.matches(case[3], out, 1, true)
    end)
  end
end)
