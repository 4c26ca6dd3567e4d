-- bot-detection against the real binary and a real echo upstream: which User-Agents Kong's
-- built-in list refuses and which it lets through, custom deny and allow lists and their
-- precedence, case sensitivity, a missing, empty or repeated User-Agent, and pathological
-- regexes and User-Agents answered promptly under the match limit. Then the verdict cache,
-- with the handler loaded in plain LuaJIT over a stub PDK, to show its two bounds.
local helpers = require "spec.helpers"
local ffi = require "ffi"

local PWD = os.getenv("PWD")

local BROWSERS = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    .. "Chrome/120.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    .. "Version/17.2 Safari/605.1.15",
  "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
  "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    .. "Chrome/120.0.6099.144 Mobile Safari/537.36",
  "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)",
}

-- Kong's list lets these tools through: it is about crawlers, not HTTP clients in general.
local TOOLS = {
  "curl/8.5.0", "Wget/1.21.3", "python-requests/2.31.0", "Go-http-client/1.1",
  "PostmanRuntime/7.36.0", "okhttp/4.12.0", "HelloWorld", "bot", "GOOGLEBOT/2.1",
}

local BOTS = {
  "Googlebot/2.1 (+http://www.google.com/bot.html)",
  "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
  "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
  "facebookexternalhit/1.1", "Twitterbot/1.0", "Apache-HttpClient/4.5.14 (Java/17)",
  "Python-urllib/3.11", "Scrapy/2.11.0 (+https://scrapy.org)",
  "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
  "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
  "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", "SomethingBot/1.0", "my-spider",
  "googlebot/2.1", "Mozilla/5.0 (compatible; GPTBot/1.0; +https://openai.com/gptbot)",
}

describe("bot-detection", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, config)
      return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
               plugins = { { name = "bot-detection", config = config } } }
    end
    gw = helpers.start({
      services = {
        svc("default", nil),
        svc("deny", { deny = { "HelloWorld", "^curl/" } }),
        svc("allow", { allow = { [[facebookexternalhit/1\.1]], "Googlebot" } }),
        svc("both", { allow = { "^Friendly" }, deny = { "Friendly", "Evil" } }),
        svc("caseless", { deny = { "(?i)helloworld" } }),
        svc("redosdeny", { deny = { "^(a|a?)+$" } }),
        svc("redosallow", { allow = { "^(a|a?)+$" }, deny = { "!$" } }),
        svc("emptyua", { deny = { "^$" } }),
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function as(ua, path)
    return assert(gw:get(path or "/default", { headers = ua and { ["User-Agent"] = ua } or nil }))
  end

  local function passes(ua, path)
    local res = as(ua, path)
    assert.equal(200, res.status, tostring(ua) .. " on " .. (path or "/default"))
    assert.equal(ua, res:json().headers["user-agent"])   -- and reaches the upstream as sent
  end

  local function forbidden(ua, path)
    local res = as(ua, path)
    assert.equal(403, res.status, ua .. " on " .. (path or "/default"))
    assert.same({ message = "Forbidden" }, res:json())
    assert.matches("^application/json", res.headers["content-type"])
  end

  describe("the built-in list", function()
    it("lets browsers and common HTTP tools through", function()
      for _, ua in ipairs(BROWSERS) do passes(ua) end
      for _, ua in ipairs(TOOLS) do passes(ua) end
    end)

    it("refuses known crawlers with 403 Forbidden, the upstream never called", function()
      local before = up:count()
      for _, ua in ipairs(BOTS) do forbidden(ua) end
      assert.equal(before, up:count())
    end)

    it("matches case-sensitively, as Kong's regexes do", function()
      forbidden("Googlebot/2.1")
      passes("GOOGLEBOT/2.1")
      forbidden("googlebot/2.1")   -- caught by the generic "[Bb]ot/" rule instead
    end)
  end)

  describe("the User-Agent header", function()
    it("when missing lets the request through (Kong)", function()
      local res = as(nil, "/deny")
      assert.equal(200, res.status)
      assert.is_nil(res:json().headers["user-agent"])
    end)

    it("when empty is matched like any other value", function()
      passes("", "/default")
      forbidden("", "/emptyua")
      passes("x", "/emptyua")
    end)

    it("sent twice answers 400, whatever the spelling of the names", function()
      for _, headers in ipairs({ { ["User-Agent"] = { "curl/8.5.0", "Googlebot/2.1" } },
                                  { ["User-Agent"] = "curl/8.5.0", ["user-agent"] = "x" } }) do
        local res = assert(gw:get("/default", { headers = headers }))
        assert.equal(400, res.status)
        assert.same({ message = "Only one User-Agent header allowed" }, res:json())
      end
    end)

    it("is trimmed before matching (Kong)", function()
      local res = assert(gw:get("/deny", { headers = { ["User-Agent"] = "  curl/8.5.0  " } }))
      assert.equal(403, res.status)
    end)
  end)

  describe("deny", function()
    it("adds unanchored regexes to the built-in list", function()
      forbidden("HelloWorld", "/deny")
      forbidden("Say HelloWorld/1.0", "/deny")
      forbidden("curl/8.5.0", "/deny")
      passes("helloworld", "/deny")
      passes("my curl/8.5.0", "/deny")
      forbidden("Googlebot/2.1", "/deny")
      for _, ua in ipairs(BROWSERS) do passes(ua, "/deny") end
    end)

    it("is caseless when the regex says so", function()
      forbidden("HELLOWORLD", "/caseless")
      forbidden("helloWorld", "/caseless")
      passes("hello world", "/caseless")
    end)

    it("keeps its verdicts apart from another config's for the same User-Agent", function()
      for _ = 1, 3 do
        forbidden("HelloWorld", "/deny")
        passes("HelloWorld", "/default")
      end
    end)
  end)

  describe("allow", function()
    it("overrides the built-in list", function()
      passes("facebookexternalhit/1.1", "/allow")
      passes("Googlebot/2.1 (+http://www.google.com/bot.html)", "/allow")
      forbidden("facebookexternalhit/1.0", "/allow")
      forbidden("Mozilla/5.0 (compatible; bingbot/2.0)", "/allow")
      for _, ua in ipairs(BROWSERS) do passes(ua, "/allow") end
    end)

    it("overrides deny too", function()
      passes("FriendlyBot/1.0", "/both")
      forbidden("UnFriendly", "/both")
      forbidden("EvilClient", "/both")
      forbidden("Mozilla/5.0 (compatible; bingbot/2.0)", "/both")
      passes("curl/8.5.0", "/both")
    end)
  end)

  describe("pathological input", function()

    it("a catastrophic deny regex hits the match limit fast and counts as a match", function()
      local res = as(string.rep("a", 40) .. "!", "/redosdeny")
      assert.equal(403, res.status)
      forbidden(string.rep("a", 40), "/redosdeny")   -- decidable: it matches
      passes(BROWSERS[1], "/redosdeny")              -- decidable: it does not
      helpers.eventually(function()
        assert.matches("[bot-detection] deny[0] could not be decided on a User-Agent "
                       .. "(matchlimit); taken as a match", gw:error_log(), 1, true)
      end)
    end)

    it("an allow regex that cannot be decided does not let the request through", function()
      local res = as(string.rep("a", 40) .. "!", "/redosallow")
      assert.equal(403, res.status)
      passes(string.rep("a", 40), "/redosallow")    -- decidable: allowed
    end)

    it("long hostile User-Agents are answered and the worker keeps serving", function()
      for _, ua in ipairs({ string.rep("a", 7000), string.rep("Ab0-", 1900),
                            string.rep("ab ", 2500), string.rep("a-", 3500) .. "!" }) do
        local res = as(ua)
        assert.equal(200, res.status)
      end
      forbidden("Googlebot/2.1")
      passes(BROWSERS[1])
    end)
  end)
end)

describe("bot-detection's verdict cache (handler over a stub PDK)", function()
  local re = require "moongate.re"
  local real_find = re.find
  local saved = {}
  local handler, calls, ua_headers, exits

  lazy_setup(function()
    saved["moongate.plugins.bot-detection.rules"] =
      package.loaded["moongate.plugins.bot-detection.rules"]
    saved.moongate = rawget(_G, "moongate")
    package.loaded["moongate.plugins.bot-detection.rules"] =
      dofile(PWD .. "/plugins/bot-detection/rules.lua")
    rawset(_G, "moongate", {
      request = {
        get_header = function() return ua_headers[1] and ua_headers[1][2] end,
        get_header_count = function(name)
          local n = 0
          for _, h in ipairs(ua_headers) do
            if h[1]:lower() == name:lower() then n = n + 1 end
          end
          return n
        end,
      },
      response = { exit = function(status) exits[#exits + 1] = status end },
      now = function() return os.time() end,
      log = { warn = function() end },
    })
    re.find = function(...)
      calls = calls + 1
      return real_find(...)
    end
    handler = dofile(PWD .. "/plugins/bot-detection/handler.lua")
  end)

  lazy_teardown(function()
    re.find = real_find
    for name, v in pairs(saved) do
      if name == "moongate" then rawset(_G, "moongate", v) else package.loaded[name] = v end
    end
  end)

  local conf = { allow = {}, deny = { "HelloWorld" } }

  -- how many regexes a request with this User-Agent ran, and the statuses it exited with
  local function run(ua, c)
    calls, exits = 0, {}
    ua_headers = { { "User-Agent", ua } }
    handler:access(c or conf)
    return calls, exits
  end

  it("examines a User-Agent once per config and remembers the verdict", function()
    local n, e = run("Mozilla/5.0 first")
    assert.equal(1 + 12, n)             -- the deny rule, then the 12 built-in rules
    assert.same({}, e)
    n, e = run("Mozilla/5.0 first")
    assert.equal(0, n)
    assert.same({}, e)
    n, e = run("HelloWorld")
    assert.equal(1, n)
    assert.same({ 403 }, e)
    n, e = run("HelloWorld")
    assert.equal(0, n)
    assert.same({ 403 }, e)
    n = run("HelloWorld", { allow = {}, deny = {} })
    assert.equal(12, n)
  end)

  it("keeps at most 10,000 User-Agents: the least recently used are examined again", function()
    local c = { allow = {}, deny = {} }
    run("ua-0", c)
    for i = 1, 9998 do run("ua-" .. i, c) end
    assert.equal(0, run("ua-0", c))      -- still cached, and now recently used
    for i = 10000, 10099 do run("ua-" .. i, c) end
    assert.equal(0, run("ua-0", c))      -- used lately: kept
    assert.equal(12, run("ua-1", c))     -- the least recently used: examined again
    for i = 20000, 29999 do run("ua-" .. i, c) end
    assert.equal(12, run("ua-0", c))     -- 10,000 newer ones push out everything older
    assert.equal(0, run("ua-29999", c))
  end)

  it("keeps at most about a mebibyte of User-Agent text", function()
    local c = { allow = {}, deny = {} }
    local function long(i) return string.rep("/.", 4000) .. i end
    for i = 1, 60 do run(long(i), c) end
    assert.equal(0, run(long(1), c))     -- 480 KB: all still cached
    for i = 61, 200 do run(long(i), c) end
    assert.equal(12, run(long(2), c))    -- 1.6 MB went through: the old ones are gone
    assert.equal(0, run(long(200), c))
  end)

  it("answers 400 for two User-Agent headers before looking at either", function()
    calls, exits = 0, {}
    ua_headers = { { "User-Agent", "Mozilla/5.0" }, { "Accept", "*/*" },
                   { "USER-AGENT", "Googlebot/2.1" } }
    handler:access(conf)
    assert.equal(0, calls)
    assert.same({ 400 }, exits)
  end)
end)
