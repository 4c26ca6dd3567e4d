-- rate-limiting with the redis policy, against real redis-server processes (helpers.
-- redis_server) and the real binary: counters live in Redis (checked there), one EVALSHA per
-- request, the same headers as the local policy, counters shared by two gateways, AUTH and
-- SELECT, the flat redis_* fields of older Kong configs, sync_rate, the sliding algorithm,
-- and failures: Redis down with and without fault_tolerant (logged once per interval, with
-- the count of what was not logged), a wrong password (never logged), and recovery without
-- restarting the gateway, including pooled connections that a Redis restart closed.
local helpers = require "spec.helpers"
local kit = require "fixtures.rate-limiting.kit"
local socket = require "socket"

local floor = math.floor

local PASSWORD = "s3cret pass"

local next_ip = 0
local function fresh_ip()
  next_ip = next_ip + 1
  return ("10.3.%d.%d"):format(floor(next_ip / 250), next_ip % 250 + 1)
end

-- A RESP reply from a luasocket connection (arrays as tables, errors as { err = ... }).
local function read_reply(c)
  local line = assert(c:receive("*l"))
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return { err = rest } end
  if kind == ":" then return tonumber(rest) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    return assert(c:receive(n + 2)):sub(1, n)
  end
  local out = {}
  for i = 1, tonumber(rest) do out[i] = read_reply(c) end
  return out
end

-- One command straight to redis (after AUTH and SELECT when asked), for setup and checks.
local function rcmd(port, opts, ...)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(3)
  local function send(...)
    local args = { ... }
    local out = { "*" .. #args .. "\r\n" }
    for _, a in ipairs(args) do
      a = tostring(a)
      out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    assert(c:send(table.concat(out)))
    return read_reply(c)
  end
  if opts and opts.password then assert(send("AUTH", opts.password) == "OK") end
  if opts and opts.db then assert(send("SELECT", opts.db) == "OK") end
  local reply = send(...)
  c:close()
  return reply
end

local function count_lines(text, plain)
  local n, i = 0, 1
  while true do
    local s, e = text:find(plain, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

describe("rate-limiting (redis policy)", function()
  local up, gw, gw2, red, red_auth, red_out

  local function redis_conf(port, extra)
    local c = { host = "127.0.0.1", port = port, timeout = 1000 }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  local function svc(name, config)
    return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
             plugins = { { name = "rate-limiting", config = config } } }
  end

  local function services()
    local R = redis_conf(red.port)
    return {
      svc("r", { second = 3, minute = 5, policy = "redis", redis = R }),
      svc("rstats", { minute = 1000, policy = "redis", redis = R }),
      svc("rshared", { minute = 4, policy = "redis", redis = R }),
      svc("rauth", { minute = 5, policy = "redis",
                     redis = redis_conf(red_auth.port, { password = PASSWORD, database = 2 }) }),
      svc("rbadauth", { minute = 5, policy = "redis",
                        redis = redis_conf(red_auth.port, { password = "not " .. PASSWORD }) }),
      svc("rft", { minute = 5, policy = "redis", redis = redis_conf(red_out.port) }),
      svc("rnoft", { minute = 5, policy = "redis", fault_tolerant = false,
                     redis = redis_conf(red_out.port) }),
      svc("rflat", { minute = 2, policy = "redis", redis_host = "127.0.0.1",
                     redis_port = red.port, redis_timeout = 1000, redis_database = 3 }),
      svc("rsync", { minute = 5, policy = "redis", redis = R, sync_rate = 0.2 }),
      svc("rfixed10", { second = 10, policy = "redis", redis = R }),
      svc("rslide", { second = 10, policy = "redis", redis = R, algorithm = "sliding" }),
    }
  end

  lazy_setup(function()
    red = helpers.redis_server()
    red_auth = helpers.redis_server({ args = "--requirepass " .. helpers.shell_quote(PASSWORD) })
    red_out = helpers.redis_server()
    up = helpers.upstream()
    local conf = { plugins = { "bundled", "rate-limiting" }, trusted_ips = { "127.0.0.1/32" },
                   services = services() }
    gw = helpers.start(conf)
    gw2 = helpers.start(conf)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if gw2 then gw2:stop() end
    if up then up:stop() end
    for _, r in ipairs({ red, red_auth, red_out }) do r.stop() end
  end)

  local function get(g, path, ip)
    return assert(g:get(path, { headers = { ["X-Real-IP"] = ip } }))
  end

  local function statuses(g, path, ip, n)
    local out = {}
    for i = 1, n do out[i] = get(g, path, ip).status end
    return out
  end

  local function rl_headers(res)
    local out = {}
    for k, v in pairs(res.headers) do
      if k:find("ratelimit", 1, true) or k == "retry-after" then out[k] = v end
    end
    return out
  end

  it("counts in redis and answers with the local policy's headers", function()
    kit.retry(5, function()
      kit.room_in_minute(3)
      local ip = fresh_ip()
      local t0 = kit.wait_into_second(0.05)
      local got = {}
      for i = 1, 5 do got[i] = get(gw, "/r", ip) end
      if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
      for i = 1, 3 do
        assert.equal(200, got[i].status)
        assert.same({ ["x-ratelimit-limit-second"] = "3",
                      ["x-ratelimit-remaining-second"] = tostring(3 - i),
                      ["x-ratelimit-limit-minute"] = "5",
                      ["x-ratelimit-remaining-minute"] = tostring(5 - i),
                      ["ratelimit-limit"] = "3",
                      ["ratelimit-remaining"] = tostring(3 - i),
                      ["ratelimit-reset"] = "1" }, rl_headers(got[i]))
      end
      for i = 4, 5 do
        assert.equal(429, got[i].status)
        assert.equal('{"message":"API rate limit exceeded"}', got[i].body)
        assert.same({ ["x-ratelimit-limit-second"] = "3",
                      ["x-ratelimit-remaining-second"] = "0",
                      ["x-ratelimit-limit-minute"] = "5",
                      ["x-ratelimit-remaining-minute"] = "2",
                      ["ratelimit-limit"] = "3",
                      ["ratelimit-remaining"] = "0",
                      ["ratelimit-reset"] = "1",
                      ["retry-after"] = "1" }, rl_headers(got[i]))
      end
      -- the counters, in redis: 3 in this minute and in this second, with a TTL
      local keys = rcmd(red.port, nil, "KEYS", "ratelimit:*:m:*:" .. ip)
      assert.equal(1, #keys)
      assert.equal("3", rcmd(red.port, nil, "GET", keys[1]))
      local ttl = rcmd(red.port, nil, "TTL", keys[1])
      assert.is_true(ttl > 0 and ttl <= 61, tostring(ttl))
      local skeys = rcmd(red.port, nil, "KEYS", "ratelimit:*:s:*:" .. ip)
      assert.equal(1, #skeys)
      assert.equal("3", rcmd(red.port, nil, "GET", skeys[1]))
      return true
    end)
  end)

  it("sends one EVALSHA per request (EVAL only once, after NOSCRIPT)", function()
    assert.equal("OK", rcmd(red.port, nil, "SCRIPT", "FLUSH"))
    assert.equal("OK", rcmd(red.port, nil, "CONFIG", "RESETSTAT"))
    local ip = fresh_ip()
    assert.same({ 200, 200, 200, 200, 200 }, statuses(gw, "/rstats", ip, 5))
    local stats = rcmd(red.port, nil, "INFO", "commandstats")
    local calls = {}
    for name, n in stats:gmatch("cmdstat_([%w|]+):calls=(%d+)") do calls[name] = tonumber(n) end
    assert.equal(5, calls.evalsha)
    assert.equal(1, calls.eval)
    -- what the script did: read, then count (and set the TTL of the new counter)
    assert.equal(5, calls.get)
    assert.equal(5, calls.incr)
    assert.equal(1, calls.expire)
    -- and nothing else: the connection is pooled (no AUTH, SELECT, PING)
    for _, name in ipairs({ "evalsha", "eval", "get", "incr", "expire", "config|resetstat",
                            "info" }) do
      calls[name] = nil
    end
    assert.same({}, calls)
  end)

  it("shares counters between two gateways", function()
    kit.room_in_minute(3)
    local ip = fresh_ip()
    assert.same({ 200, 200 }, statuses(gw, "/rshared", ip, 2))
    assert.same({ 200, 200, 429 }, statuses(gw2, "/rshared", ip, 3))
    assert.same({ 429 }, statuses(gw, "/rshared", ip, 1))
  end)

  it("authenticates and selects the database", function()
    kit.room_in_minute(3)
    local ip = fresh_ip()
    local res = get(gw, "/rauth", ip)
    assert.equal(200, res.status)
    assert.equal("4", res.headers["x-ratelimit-remaining-minute"])
    local keys = rcmd(red_auth.port, { password = PASSWORD, db = 2 }, "KEYS", "*" .. ip)
    assert.equal(1, #keys)
    assert.same({}, rcmd(red_auth.port, { password = PASSWORD }, "KEYS", "*" .. ip))
  end)

  it("takes Kong's older flat redis_* fields", function()
    kit.room_in_minute(3)
    local ip = fresh_ip()
    assert.same({ 200, 200, 429 }, statuses(gw, "/rflat", ip, 3))
    assert.equal(1, #rcmd(red.port, { db = 3 }, "KEYS", "*" .. ip))
  end)

  it("lets requests through on a wrong password, logging the error but not the password",
     function()
    local res = get(gw, "/rbadauth", fresh_ip())
    assert.equal(200, res.status)
    assert.same({}, rl_headers(res))
    helpers.eventually(function()
      assert.matches("%[rate%-limiting%] counters unavailable, requests are let through "
                     .. "unlimited %(fault_tolerant%): could not connect to redis: WRONGPASS",
                     gw:error_log())
    end)
    assert.is_nil(gw:error_log():find(PASSWORD, 1, true))
  end)

  describe("sync_rate", function()
    it("counts in the worker and pushes the counts to redis", function()
      kit.room_in_minute(5)
      local ip = fresh_ip()
      assert.same({ 200, 200, 200, 200, 200, 429, 429 }, statuses(gw, "/rsync", ip, 7))
      helpers.eventually(function()
        local keys = rcmd(red.port, nil, "KEYS", "ratelimit:*:m:*:" .. ip)
        assert.equal(1, #keys)
        assert.equal("5", rcmd(red.port, nil, "GET", keys[1]))
      end, 3)
      -- another node, which fetches the window from redis, knows the five
      assert.same({ 429 }, statuses(gw2, "/rsync", ip, 1))
    end)
  end)

  describe("sliding algorithm", function()
    it("limits a burst across a window boundary that the fixed window lets through", function()
      kit.retry(6, function()
        local fip, sip = fresh_ip(), fresh_ip()
        local t0 = kit.wait_into_second(0.45)
        local f1 = statuses(gw, "/rfixed10", fip, 10)
        local s1 = statuses(gw, "/rslide", sip, 10)
        local t1 = helpers.now()
        if floor(t1) ~= floor(t0) or t1 % 1 > 0.9 then return false, "first burst too slow" end
        local t2 = kit.wait_into_second(0.02)
        local f2 = statuses(gw, "/rfixed10", fip, 10)
        local s2 = statuses(gw2, "/rslide", sip, 10)   -- and from the other node
        local t3 = helpers.now()
        if floor(t3) ~= floor(t2) or t3 % 1 > 0.4 then return false, "second burst too slow" end
        local ten = { 200, 200, 200, 200, 200, 200, 200, 200, 200, 200 }
        assert.same(ten, f1)
        assert.same(ten, s1)
        assert.same(ten, f2)
        local passed = 0
        for _, s in ipairs(s2) do if s == 200 then passed = passed + 1 end end
        assert.is_true(passed <= 4, "sliding let " .. passed .. " through")
        -- the previous window's counter is what weighs
        assert.equal(1, #rcmd(red.port, nil, "KEYS", "ratelimit:*:s:" .. floor(t0) .. ":" .. sip))
        return true
      end)
    end)
  end)

  describe("when redis fails", function()
    local FT = "counters unavailable, requests are let through unlimited (fault_tolerant)"
    local NOFT = "counters unavailable, requests are answered 500"

    it("lets requests through with fault_tolerant, logging once per interval", function()
      kit.room_in_minute(3)
      local ip = fresh_ip()
      assert.same({ 200, 200 }, statuses(gw, "/rft", ip, 2))   -- pooled connections, warm
      red_out.kill()
      local before = count_lines(gw:error_log(), FT)
      for _ = 1, 20 do
        local res = get(gw, "/rft", ip)
        assert.equal(200, res.status)
        assert.same({}, rl_headers(res))
      end
      local log = gw:error_log()
      assert.equal(before + 1, count_lines(log, FT))
      assert.matches("could not connect to redis: connection refused", log, 1, true)
    end)

    it("answers 500 without fault_tolerant", function()
      for _ = 1, 3 do
        local res = get(gw, "/rnoft", fresh_ip())
        assert.equal(500, res.status)
        assert.equal('{"message":"An unexpected error occurred"}', res.body)
        assert.same({}, rl_headers(res))
      end
      assert.equal(1, count_lines(gw:error_log(), NOFT))
    end)

    it("says how many failures it did not log, at the next report", function()
      helpers.sleep(10.2)   -- policies.lua's LOG_INTERVAL
      assert.equal(200, get(gw, "/rft", fresh_ip()).status)
      helpers.eventually(function()
        assert.matches(FT .. ": could not connect to redis: connection refused (and 19 more "
                       .. "failures since the last report)", gw:error_log(), 1, true)
      end)
    end)

    it("counts again once redis is back, without a restart of the gateway", function()
      red_out.restart()
      kit.room_in_minute(3)
      local ip = fresh_ip()
      local got = {}
      for i = 1, 6 do got[i] = get(gw, "/rft", ip) end
      for i = 1, 5 do
        assert.equal(200, got[i].status)
        assert.equal(tostring(5 - i), got[i].headers["x-ratelimit-remaining-minute"])
      end
      assert.equal(429, got[6].status)
      assert.equal(200, get(gw, "/rnoft", fresh_ip()).status)
    end)

    it("counts the first request after a redis restart (no stale pooled connection)",
       function()
      kit.room_in_minute(3)
      assert.equal(200, get(gw, "/rft", fresh_ip()).status)   -- a connection in the pool
      local before = count_lines(gw:error_log(), "rate-limiting")
      red_out.restart()
      local ip = fresh_ip()
      local res = get(gw, "/rft", ip)
      assert.equal(200, res.status)
      assert.equal("4", res.headers["x-ratelimit-remaining-minute"])   -- counted, not skipped
      assert.equal(1, #rcmd(red_out.port, nil, "KEYS", "*" .. ip))
      assert.equal(before, count_lines(gw:error_log(), "rate-limiting"))
    end)
  end)
end)
