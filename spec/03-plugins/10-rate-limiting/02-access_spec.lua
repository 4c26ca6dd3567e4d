-- rate-limiting with the local policy, against the real binary and a real echo upstream:
-- the headers Kong sends (values checked exactly), refusals (status, body, Retry-After) that
-- never reach the upstream, window boundaries (second windows and short sleeps), refused
-- requests not counting, the tightest window and its tie rule, hide_client_headers,
-- error_code/error_message, every limit_by with its fallback to the client IP, a plugin set
-- on a consumer, namespaces, calendar windows (month, year), the sliding algorithm, and a
-- reload that drops the shared dictionary (refused).
-- Each test counts as its own client (X-Real-IP from a trusted proxy) so tests never share
-- a counter.
local helpers = require "spec.helpers"
local kit = require "fixtures.rate-limiting.kit"
local windows = dofile(os.getenv("PWD") .. "/plugins/rate-limiting/windows.lua")

local floor, ceil = math.floor, math.ceil

local next_ip = 0
local function fresh_ip()
  next_ip = next_ip + 1
  return ("10.1.%d.%d"):format(floor(next_ip / 250), next_ip % 250 + 1)
end

describe("rate-limiting (local policy)", function()
  local up, gw

  local function svc(name, config, extra)
    local s = { name = name, url = up.url,
                routes = { { name = name, paths = { "/" .. name } } },
                plugins = { { name = "rate-limiting", config = config } } }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      plugins = { "bundled", "rate-limiting" },
      shared_dicts = { rate_limit = "2m" },
      trusted_ips = { "127.0.0.1/32" },
      services = {
        svc("fixed", { second = 3, minute = 5 }),
        svc("refused", { second = 2, minute = 3 }),
        svc("tie", { second = 5, hour = 5 }),
        svc("minute", { minute = 100 }),
        svc("six", { second = 100, minute = 200, hour = 300, day = 400, month = 500,
                     year = 600 }),
        svc("monthly", { month = 1000 }),
        svc("yearly", { year = 1000 }),
        svc("hidden", { second = 1, minute = 100, hide_client_headers = true }),
        svc("custom", { second = 1, error_code = 503, error_message = "slow down" }),
        svc("byip", { minute = 2, limit_by = "ip" }),
        svc("anon", { minute = 2 }),   -- limit_by consumer without authentication
        { name = "keyed", url = up.url, routes = { { name = "keyed", paths = { "/keyed" } } },
          plugins = { { name = "key-auth" },
                      { name = "rate-limiting", config = { minute = 2 } } } },
        { name = "cred", url = up.url, routes = { { name = "cred", paths = { "/cred" } } },
          plugins = { { name = "key-auth" },
                      { name = "rate-limiting", config = { minute = 2,
                                                           limit_by = "credential" } } } },
        { name = "svc-a", url = up.url,
          routes = { { name = "svc-a1", paths = { "/svc-a1" } },
                     { name = "svc-a2", paths = { "/svc-a2" } } },
          plugins = { { name = "rate-limiting", config = { minute = 2,
                                                           limit_by = "service" } } } },
        { name = "svc-b", url = up.url, routes = { { name = "svc-b", paths = { "/svc-b" } } },
          plugins = { { name = "key-auth" } } },
        { name = "svc-c", url = up.url, routes = { { name = "svc-c", paths = { "/svc-c" } } },
          plugins = { { name = "key-auth" } } },
        svc("hdr", { minute = 2, limit_by = "header", header_name = "X-Client" }),
        { name = "pth", url = up.url, routes = { { name = "pth", paths = { "/pth" } } },
          plugins = { { name = "rate-limiting", config = { minute = 2, limit_by = "path",
                                                           path = "/pth/hot" } } } },
        svc("ns1", { minute = 2, limit_by = "header", header_name = "X-Team",
                     namespace = "shared" }),
        svc("ns2", { minute = 3, limit_by = "header", header_name = "X-Team",
                     namespace = "shared" }),
        svc("nsx1", { minute = 2, limit_by = "header", header_name = "X-Team",
                      namespace = "x1" }),
        svc("nsx2", { minute = 2, limit_by = "header", header_name = "X-Team",
                      namespace = "x2" }),
        svc("same1", { minute = 2, limit_by = "header", header_name = "X-Team" }),
        svc("same2", { minute = 2, limit_by = "header", header_name = "X-Team" }),
        svc("slfixed", { second = 10 }),
        svc("slsliding", { second = 10, algorithm = "sliding" }),
        svc("slretry", { second = 4, algorithm = "sliding" }),
      },
      consumers = {
        { username = "alice", keyauth_credentials = { { key = "alice-1" },
                                                      { key = "alice-2" } } },
        { username = "bob", keyauth_credentials = { { key = "bob-1" } } },
        { username = "carol", keyauth_credentials = { { key = "carol-1" } },
          plugins = { { name = "rate-limiting",
                        config = { minute = 2, limit_by = "service" } } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function get(path, ip, headers)
    local h = { ["X-Real-IP"] = ip }
    for k, v in pairs(headers or {}) do h[k] = v end
    return assert(gw:get(path, { headers = h }))
  end

  local function statuses(path, ip, n, headers)
    local out = {}
    for i = 1, n do out[i] = get(path, ip, headers).status end
    return out
  end

  -- the X-RateLimit-*, RateLimit-* and Retry-After headers of a response, in one table
  local function rl_headers(res)
    local out = {}
    for k, v in pairs(res.headers) do
      if k:find("ratelimit", 1, true) or k == "retry-after" then out[k] = v end
    end
    return out
  end

  describe("counts and answers as Kong does", function()
    it("sends each window's limit and remaining, and RateLimit-* for the tightest", function()
      kit.retry(5, function()
        kit.room_in_minute(3)
        local ip = fresh_ip()
        up:clear()
        local t0 = kit.wait_into_second(0.05)
        local got = {}
        for i = 1, 5 do got[i] = get("/fixed", ip) end
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
          local res = got[i]
          assert.equal(429, res.status)
          assert.equal('{"message":"API rate limit exceeded"}', res.body)
          assert.equal("application/json; charset=utf-8", res.headers["content-type"])
          assert.same({ ["x-ratelimit-limit-second"] = "3",
                        ["x-ratelimit-remaining-second"] = "0",
                        ["x-ratelimit-limit-minute"] = "5",
                        ["x-ratelimit-remaining-minute"] = "2",
                        ["ratelimit-limit"] = "3",
                        ["ratelimit-remaining"] = "0",
                        ["ratelimit-reset"] = "1",
                        ["retry-after"] = "1" }, rl_headers(res))
        end
        assert.equal(3, up:count())   -- refused requests never reach the upstream
        return true
      end)
    end)

    it("starts a new second window from zero, and then refuses by the minute", function()
      kit.retry(5, function()
        kit.room_in_minute(5)
        local ip = fresh_ip()
        local t0 = kit.wait_into_second(0.05)
        assert.same({ 200, 200, 200, 429 }, statuses("/fixed", ip, 4))
        if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
        local t1 = kit.wait_into_second(0.05)
        local a, b, c = get("/fixed", ip), get("/fixed", ip), get("/fixed", ip)
        local t2 = helpers.now()
        if floor(t2) ~= floor(t1) then return false, "crossed a second" end
        assert.equal(200, a.status)
        assert.equal("2", a.headers["x-ratelimit-remaining-second"])
        assert.equal("1", a.headers["x-ratelimit-remaining-minute"])
        assert.equal("1", a.headers["ratelimit-remaining"])   -- the minute is tighter now
        assert.equal("5", a.headers["ratelimit-limit"])
        assert.equal(200, b.status)
        assert.equal("0", b.headers["x-ratelimit-remaining-minute"])
        assert.equal(429, c.status)
        -- refused by the minute: Retry-After tells when the minute ends
        local h = rl_headers(c)
        assert.equal("1", h["x-ratelimit-remaining-second"])
        assert.equal("0", h["x-ratelimit-remaining-minute"])
        assert.equal("5", h["ratelimit-limit"])
        local lo, hi = ceil(60 - t2 % 60), ceil(60 - t1 % 60)
        local retry = tonumber(h["retry-after"])
        assert.is_true(retry >= lo and retry <= hi, h["retry-after"])
        assert.equal(h["retry-after"], h["ratelimit-reset"])
        return true
      end)
    end)

    it("does not count refused requests (Kong counts only what it lets through)", function()
      kit.retry(5, function()
        kit.room_in_minute(4)
        local ip = fresh_ip()
        local t0 = kit.wait_into_second(0.05)
        local first = statuses("/refused", ip, 5)
        if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
        assert.same({ 200, 200, 429, 429, 429 }, first)
        local t1 = kit.wait_into_second(0.05)
        local second = statuses("/refused", ip, 2)
        if floor(helpers.now()) ~= floor(t1) then return false, "crossed a second" end
        -- the minute allows 3: the three refusals above took none of them
        assert.same({ 200, 429 }, second)
        return true
      end)
    end)

    it("gives a tie to the longer window (Kong's rule)", function()
      local now = helpers.now()
      if now % 3600 > 3590 then helpers.sleep(3600 - now % 3600 + 0.05) end
      local t0 = helpers.now()
      local res = get("/tie", fresh_ip())
      local t1 = helpers.now()
      local h = rl_headers(res)
      assert.equal("4", h["x-ratelimit-remaining-second"])
      assert.equal("4", h["x-ratelimit-remaining-hour"])
      assert.equal("5", h["ratelimit-limit"])
      assert.equal("4", h["ratelimit-remaining"])
      -- the hour's reset, not the second's
      local reset = tonumber(h["ratelimit-reset"])
      assert.is_true(reset >= ceil(3600 - t1 % 3600) and reset <= ceil(3600 - t0 % 3600))
    end)

    it("sends RateLimit-Reset as the seconds left in the window", function()
      local t0 = helpers.now()
      local res = get("/minute", fresh_ip())
      local t1 = helpers.now()
      local reset = tonumber(res.headers["ratelimit-reset"])
      local lo, hi = ceil(60 - t1 % 60), ceil(60 - t0 % 60)
      if lo > hi then lo = 1 end   -- the minute turned during the request
      assert.is_true(reset >= lo and reset <= hi, tostring(reset))
      assert.equal("99", res.headers["x-ratelimit-remaining-minute"])
      assert.is_nil(res.headers["retry-after"])
    end)

    it("sends headers for all six windows", function()
      local h = rl_headers(get("/six", fresh_ip()))
      for i, title in ipairs({ "second", "minute", "hour", "day", "month", "year" }) do
        assert.equal(tostring(i * 100), h["x-ratelimit-limit-" .. title])
        assert.equal(tostring(i * 100 - 1), h["x-ratelimit-remaining-" .. title])
      end
      assert.equal("100", h["ratelimit-limit"])
      assert.equal("99", h["ratelimit-remaining"])
      assert.equal("1", h["ratelimit-reset"])
    end)
  end)

  describe("calendar windows", function()
    -- the next month's and year's first second, by GNU date (independent of the plugin)
    local function date_u(expr)
      return tonumber(helpers.run("date -u -d " .. helpers.shell_quote(expr) .. " +%s")
                      :match("%d+"))
    end

    it("resets a month window at the start of the next calendar month (UTC)", function()
      local month_start = helpers.run("date -u +%Y-%m-01"):match("%S+")
      local next_month = date_u(month_start .. " 00:00:00 UTC +1 month")
      local t0 = helpers.now()
      local res = get("/monthly", fresh_ip())
      local t1 = helpers.now()
      local reset = tonumber(res.headers["ratelimit-reset"])
      assert.is_true(reset >= ceil(next_month - t1) and reset <= ceil(next_month - t0),
                     tostring(reset) .. " vs " .. (next_month - t0))
      assert.equal("999", res.headers["x-ratelimit-remaining-month"])
    end)

    it("resets a year window at the start of the next calendar year (UTC)", function()
      local next_year = date_u(helpers.run("date -u +%Y"):match("%d+") + 1 .. "-01-01 UTC")
      local t0 = helpers.now()
      local res = get("/yearly", fresh_ip())
      local t1 = helpers.now()
      local reset = tonumber(res.headers["ratelimit-reset"])
      assert.is_true(reset >= ceil(next_year - t1) and reset <= ceil(next_year - t0))
    end)

    it("knows month lengths and leap years", function()
      local function utc(y, m, d) return windows.days_from_civil(y, m, d) * 86400 end
      assert.equal(951782400, utc(2000, 2, 29))   -- `date -u -d 2000-02-29 +%s`
      local s, e, p = windows.bounds(5, utc(2024, 2, 29) + 3600)
      assert.same({ utc(2024, 2, 1), utc(2024, 3, 1), utc(2024, 1, 1) }, { s, e, p })
      s, e, p = windows.bounds(5, utc(2023, 12, 31) + 86399.5)
      assert.same({ utc(2023, 12, 1), utc(2024, 1, 1), utc(2023, 11, 1) }, { s, e, p })
      s, e, p = windows.bounds(6, utc(2100, 3, 1))
      assert.same({ utc(2100, 1, 1), utc(2101, 1, 1), utc(2099, 1, 1) }, { s, e, p })
      assert.equal(365 * 86400, utc(2101, 1, 1) - utc(2100, 1, 1))   -- 2100 is not leap
      assert.equal(366 * 86400, utc(2001, 1, 1) - utc(2000, 1, 1))
      for _, d in ipairs({ "2000-02-29", "2024-03-01", "1999-12-31", "2100-03-01" }) do
        local y, m, dd = d:match("(%d+)-(%d+)-(%d+)")
        assert.equal(date_u(d .. " UTC"), utc(tonumber(y), tonumber(m), tonumber(dd)))
      end
    end)
  end)

  it("hides every informative header with hide_client_headers, Retry-After too", function()
    kit.retry(5, function()
      local ip = fresh_ip()
      local t0 = kit.wait_into_second(0.05)
      local a, b = get("/hidden", ip), get("/hidden", ip)
      if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
      assert.equal(200, a.status)
      assert.same({}, rl_headers(a))
      assert.equal(429, b.status)
      assert.same({}, rl_headers(b))
      assert.equal('{"message":"API rate limit exceeded"}', b.body)
      return true
    end)
  end)

  it("answers with error_code and error_message", function()
    kit.retry(5, function()
      local ip = fresh_ip()
      local t0 = kit.wait_into_second(0.05)
      local a, b = get("/custom", ip), get("/custom", ip)
      if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
      assert.equal(200, a.status)
      assert.equal(503, b.status)
      assert.equal('{"message":"slow down"}', b.body)
      assert.equal("1", b.headers["retry-after"])
      return true
    end)
  end)

  describe("limit_by", function()
    before_each(function() kit.room_in_minute(5) end)

    it("ip: one counter per client address", function()
      local a, b = fresh_ip(), fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/byip", a, 3))
      assert.same({ 200 }, statuses("/byip", b, 1))
    end)

    it("consumer falls back to the client address without authentication", function()
      local a, b = fresh_ip(), fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/anon", a, 3))
      assert.same({ 200, 200, 429 }, statuses("/anon", b, 3))
    end)

    it("consumer: one counter per consumer, whatever its credential or address", function()
      assert.same({ 200 }, statuses("/keyed", fresh_ip(), 1, { apikey = "alice-1" }))
      assert.same({ 200, 429 }, statuses("/keyed", fresh_ip(), 2, { apikey = "alice-2" }))
      assert.same({ 200, 200, 429 }, statuses("/keyed", fresh_ip(), 3, { apikey = "bob-1" }))
    end)

    it("credential: one counter per credential", function()
      local ip = fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/cred", ip, 3, { apikey = "alice-1" }))
      assert.same({ 200, 200, 429 }, statuses("/cred", ip, 3, { apikey = "alice-2" }))
    end)

    it("service: one counter per service, across its routes and clients", function()
      assert.same({ 200 }, statuses("/svc-a1", fresh_ip(), 1))
      assert.same({ 200, 429 }, statuses("/svc-a2", fresh_ip(), 2))
    end)

    it("service, set on a consumer: counts that consumer per service", function()
      local key = { apikey = "carol-1" }
      assert.same({ 200, 200, 429 }, statuses("/svc-b", fresh_ip(), 3, key))
      assert.same({ 200, 200, 429 }, statuses("/svc-c", fresh_ip(), 3, key))
      -- others are not limited there
      assert.same({ 200, 200, 200 }, statuses("/svc-b", fresh_ip(), 3, { apikey = "bob-1" }))
    end)

    it("header: one counter per value, the client address without it", function()
      local tag = "c-" .. fresh_ip()
      assert.same({ 200 }, statuses("/hdr", fresh_ip(), 1, { ["X-Client"] = tag }))
      assert.same({ 200, 429 }, statuses("/hdr", fresh_ip(), 2, { ["X-Client"] = tag }))
      assert.same({ 200 }, statuses("/hdr", fresh_ip(), 1, { ["X-Client"] = tag .. "x" }))
      local ip = fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/hdr", ip, 3))
      assert.same({ 200 }, statuses("/hdr", fresh_ip(), 1))
    end)

    it("header: long values that differ only at the end are told apart", function()
      local long = ("v"):rep(500) .. fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/hdr", fresh_ip(), 3, { ["X-Client"] = long }))
      assert.same({ 200, 200 }, statuses("/hdr", fresh_ip(), 2,
                                          { ["X-Client"] = long .. "!" }))
    end)

    it("path: one counter for the configured path, the client address elsewhere", function()
      assert.same({ 200 }, statuses("/pth/hot", fresh_ip(), 1))
      assert.same({ 200, 429 }, statuses("/pth/hot", fresh_ip(), 2))
      local ip = fresh_ip()
      assert.same({ 200, 200, 429 }, statuses("/pth/cold", ip, 3))
      assert.same({ 200 }, statuses("/pth/cold", fresh_ip(), 1))
    end)
  end)

  describe("namespace", function()
    before_each(function() kit.room_in_minute(5) end)

    local function team() return { ["X-Team"] = "t-" .. fresh_ip() } end

    it("shares counters between instances that name the same one", function()
      local t = team()
      assert.same({ 200, 200 }, statuses("/ns1", fresh_ip(), 2, t))
      assert.same({ 200, 429 }, statuses("/ns2", fresh_ip(), 2, t))   -- ns2 allows 3
      assert.same({ 429 }, statuses("/ns1", fresh_ip(), 1, t))
    end)

    it("separates instances with different ones", function()
      local t = team()
      assert.same({ 200, 200, 429 }, statuses("/nsx1", fresh_ip(), 3, t))
      assert.same({ 200, 200, 429 }, statuses("/nsx2", fresh_ip(), 3, t))
    end)

    it("by default, shares counters between instances with the same limits", function()
      -- Kong keys counters by the plugin's route and service; moongate, which does not give
      -- a plugin its scope, by what the instance counts (a namespace separates them)
      local t = team()
      assert.same({ 200, 200 }, statuses("/same1", fresh_ip(), 2, t))
      assert.same({ 429 }, statuses("/same2", fresh_ip(), 1, t))
    end)
  end)

  describe("sliding algorithm", function()
    it("limits a burst across a window boundary that the fixed window lets through", function()
      kit.retry(6, function()
        local fip, sip = fresh_ip(), fresh_ip()
        local t0 = kit.wait_into_second(0.45)
        local f1 = statuses("/slfixed", fip, 10)
        local s1 = statuses("/slsliding", sip, 10)
        local t1 = helpers.now()
        if floor(t1) ~= floor(t0) or t1 % 1 > 0.9 then return false, "first burst too slow" end
        local t2 = kit.wait_into_second(0.02)
        local f2 = statuses("/slfixed", fip, 10)
        local s2, refused = {}, {}
        for i = 1, 10 do
          local res = get("/slsliding", sip)
          s2[i] = res.status
          if res.status == 429 then refused[#refused + 1] = res end
        end
        local t3 = helpers.now()
        if floor(t3) ~= floor(t2) or t3 % 1 > 0.4 then return false, "second burst too slow" end
        assert.same({ 200, 200, 200, 200, 200, 200, 200, 200, 200, 200 }, f1)
        assert.same({ 200, 200, 200, 200, 200, 200, 200, 200, 200, 200 }, s1)
        -- fixed: a new window, ten more
        assert.same({ 200, 200, 200, 200, 200, 200, 200, 200, 200, 200 }, f2)
        -- sliding: the previous ten weigh (1 - elapsed): at most 10 * 0.4 = 4 pass
        local passed = 0
        for _, s in ipairs(s2) do if s == 200 then passed = passed + 1 end end
        assert.is_true(passed <= 4, "sliding let " .. passed .. " through")
        for _, res in ipairs(refused) do
          assert.equal("0", res.headers["x-ratelimit-remaining-second"])
          assert.is_true(tonumber(res.headers["retry-after"]) >= 1)
        end
        return true
      end)
    end)

    it("sends a Retry-After after which a request passes", function()
      kit.retry(4, function()
        local ip = fresh_ip()
        local t0 = kit.wait_into_second(0.05)
        local got = statuses("/slretry", ip, 4)
        local res = get("/slretry", ip)
        if floor(helpers.now()) ~= floor(t0) then return false, "crossed a second" end
        assert.same({ 200, 200, 200, 200 }, got)
        assert.equal(429, res.status)
        local retry = tonumber(res.headers["retry-after"])
        assert.is_true(retry >= 1 and retry <= 2, res.headers["retry-after"])
        assert.equal(res.headers["retry-after"], res.headers["ratelimit-reset"])
        helpers.sleep(retry + 0.01)
        assert.equal(200, get("/slretry", ip).status)
        return true
      end)
    end)
  end)

  describe("and the shared dictionary", function()
    local gw3

    local function conf(dicts)
      return { shared_dicts = dicts, plugins = { "bundled", "rate-limiting" },
               services = { svc("reloaded", { minute = 100 }) } }
    end

    lazy_setup(function() gw3 = helpers.start(conf(nil)) end)
    lazy_teardown(function() if gw3 then gw3:stop() end end)

    it("exists by default (12m, as Kong's); declaring it with a new size starts afresh",
       function()
      kit.room_in_minute(10)   -- both requests in one minute window
      assert.equal("99", gw3:get("/reloaded").headers["x-ratelimit-remaining-minute"])
      assert.equal("98", gw3:get("/reloaded").headers["x-ratelimit-remaining-minute"])
      -- a new size is a new, empty dictionary
      assert.is_true(gw3:reload(conf({ rate_limit = "2m" })))
      helpers.eventually(function()
        assert.matches("reload done", gw3:error_log(), 1, true)
        assert.equal("99", gw3:get("/reloaded").headers["x-ratelimit-remaining-minute"])
      end)
    end)
  end)
end)
