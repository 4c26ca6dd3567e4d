-- The Lua plugin runtime (DESIGN.md §4): plugins found on lua_package_path, enabled by the
-- `plugins` setting, configs validated against their schemas, chains ordered by PRIORITY
-- with Kong's scope precedence, phases and PDK calls, exit, isolation of a failing plugin,
-- and coroutines that wait without blocking the worker. The test plugins live in
-- spec/fixtures/plugins/moongate/plugins/.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"
local ALL = { "bundled", "headers", "terminator", "order-a", "order-b", "boom", "sleeper",
              "misuse", "rewriter", "ownco", "logonly", "leftovers" }

local function settings(extra)
  local t = { lua_package_path = PLUGIN_PATH, plugins = ALL }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

describe("plugins", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local conf = settings({
      services = {
        { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
        { name = "hdr", url = up.url,
          plugins = { { name = "headers", config = { header = "X-Svc", value = "service" } } },
          routes = {
            { name = "hdr-route", paths = { "/hdr-route" },
              plugins = { { name = "headers", config = { header = "X-Route", value = "route" } } } },
            { name = "hdr-svc", paths = { "/hdr-svc" } },
          } },
        { name = "term", url = up.url, plugins = { { name = "terminator" } },
          routes = { { name = "term", paths = { "/term" } } } },
        { name = "order", url = up.url,
          plugins = { { name = "order-b", config = { tag = "svc" } }, { name = "order-a" } },
          routes = { { name = "order", paths = { "/order" } } } },
        { name = "boom", url = up.url, routes = {
            { name = "boom-access", paths = { "/boom-access" },
              plugins = { { name = "boom", config = { phase = "access" } } } },
            { name = "boom-hf", paths = { "/boom-hf" },
              plugins = { { name = "boom", config = { phase = "header_filter" } } } },
            { name = "boom-log", paths = { "/boom-log" },
              plugins = { { name = "boom", config = { phase = "log" } } } },
          } },
        { name = "sleep", url = up.url, plugins = { { name = "sleeper", config = { seconds = 0.6 } } },
          routes = { { name = "sleep", paths = { "/sleep" } } } },
        { name = "misuse", url = up.url, plugins = { { name = "misuse" } },
          routes = { { name = "misuse", paths = { "/misuse" } } } },
        { name = "ownco", url = up.url, plugins = { { name = "ownco" } },
          routes = { { name = "ownco", paths = { "/ownco" } } } },
        { name = "logonly", url = up.url, plugins = { { name = "logonly" } },
          routes = { { name = "logonly", paths = { "/logonly" } } } },
        { name = "leftovers", url = up.url, plugins = { { name = "leftovers" } },
          routes = { { name = "leftovers", paths = { "/leftovers" } } } },
      },
    })
    gw = helpers.start(conf)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  describe("phases and the PDK", function()
    it("lets access read the request and change the upstream request", function()
      local res = assert(gw:get("/hdr-svc/x", { headers = { ["X-In"] = "hello",
                                                            ["X-Remove-Me"] = "secret" } }))
      assert.equal(200, res.status)
      local seen = res:json().headers
      assert.equal("hello", seen["x-from-plugin"])
      assert.equal("service", seen["x-svc"])
      assert.is_nil(seen["x-remove-me"])
      assert.same({ "one", "two" }, seen["x-multi"])
    end)

    it("lets header_filter see the upstream response and change the client's", function()
      local res = assert(gw:get("/hdr-svc/y", { headers = {
        ["X-Upstream-Mode"] = "status:201",
        ["X-Upstream-Headers"] = "X-Echo-Me: from-upstream; X-Drop-Me: gone" } }))
      assert.equal(201, res.status)
      assert.equal("201", res.headers["x-upstream-status"])
      assert.equal("from-upstream", res.headers["x-echoed"])
      assert.is_nil(res.headers["x-drop-me"])
      assert.equal("yes", res.headers["x-set-in-access"])
      assert.same({ "1000000000000000", "-42", "1.5" }, res.headers["x-numbers"])
    end)

    it("shares moongate.ctx.shared across phases and keeps moongate.ctx.plugin per plugin",
       function()
      local res = assert(gw:get("/hdr-svc/ctx"))
      assert.equal("/hdr-svc/ctx", res.headers["x-shared"])
      assert.equal("1", res.headers["x-plugin-ctx"])
    end)

    it("runs the log phase after the response, with serialize() redacting credentials",
       function()
      assert.equal(200, assert(gw:get("/hdr-svc/logme", {
        headers = { Authorization = "Bearer sekrit" } })).status)
      helpers.eventually(function()
        assert.matches("%[headers%] served GET /hdr%-svc/logme %-> 200 route=hdr%-svc "
                       .. "auth=REDACTED", gw:error_log())
      end, 3)
      assert.not_matches("sekrit", gw:error_log())
    end)

    it("ends a request with response.exit: JSON body, headers, and the upstream is not called",
       function()
      local before = up:count()
      local res = assert(gw:get("/term/x?deny=1"))
      assert.equal(403, res.status)
      assert.same({ message = "denied" }, res:json())
      assert.matches("^application/json", res.headers["content-type"])
      assert.equal("test", res.headers["x-why"])
      assert.matches("^%x+$", res.headers["x-request-id"])
      assert.equal(before, up:count())
      local txt = assert(gw:get("/term/x?deny=text"))
      assert.equal("plain words", txt.body)
      assert.equal("text/plain", txt.headers["content-type"])
      assert.equal(200, assert(gw:get("/term/x")).status)   -- without deny: proxied
    end)

    it("refuses a PDK call in the wrong phase with a clear error and a 500", function()
      local res = assert(gw:get("/misuse"))
      assert.equal(500, res.status)
      helpers.eventually(function()
        assert.matches("moongate.response.get_status is not allowed in the access phase",
                       gw:error_log())
      end, 3)
    end)
  end)

  describe("chains", function()
    it("runs plugins by PRIORITY, higher first", function()
      local res = assert(gw:get("/order"))
      assert.equal("a,b", res:json().headers["x-order"])
      assert.equal("svc", res:json().headers["x-tag"])
    end)

    it("lets the route's configuration win over the service's", function()
      local seen = assert(gw:get("/hdr-route/x")):json().headers
      assert.equal("route", seen["x-route"])
      assert.is_nil(seen["x-svc"])
    end)

    it("leaves a route without plugins untouched", function()
      local seen = assert(gw:get("/plain/x", { headers = { ["X-In"] = "v" } })):json().headers
      assert.is_nil(seen["x-from-plugin"])
    end)
  end)

  describe("isolation", function()
    it("answers 500 with the request id when a plugin raises in access, and logs the traceback",
       function()
      local res = assert(gw:get("/boom-access"))
      assert.equal(500, res.status)
      local rid = res.headers["x-request-id"]
      assert.matches("^%x+$", rid)
      helpers.eventually(function()
        local log = gw:error_log()
        assert.matches("%[boom%] access phase failed %(route boom%-access, request " .. rid, log)
        assert.matches("boom in access", log)
        assert.matches("stack traceback", log)
      end, 3)
      assert.equal(200, assert(gw:get("/plain")).status)   -- the worker keeps serving
    end)

    it("answers 500 when a plugin raises in header_filter", function()
      assert.equal(500, assert(gw:get("/boom-hf")).status)
    end)

    it("keeps the response when a plugin raises in the log phase", function()
      assert.equal(200, assert(gw:get("/boom-log")).status)
      helpers.eventually(function()
        assert.matches("%[boom%] log phase failed", gw:error_log())
      end, 3)
    end)
  end)

  describe("lifecycle", function()
    it("runs the log phase of a route whose plugins only log", function()
      assert.equal(200, assert(gw:get("/logonly/x")).status)
      helpers.eventually(function()
        assert.matches("logonly saw /logonly/x %-> 200", gw:error_log())
      end, 3)
    end)

    it("cancels a wait armed in a plugin's own coroutine when the phase ends", function()
      local pid = gw:worker_pids()[1]
      local res = assert(gw:get("/ownco/x"))
      assert.equal(200, res.status)
      assert.equal("returned", res:json().headers["x-own-coroutine"])
      helpers.sleep(0.4)                                  -- the abandoned sleep's due time
      assert.equal(200, assert(gw:get("/plain")).status)
      assert.same({ pid }, gw:worker_pids())              -- no crash, no respawn
      assert.not_matches("respawning", gw:error_log())
    end)
  end)

  describe("per-request state", function()
    it("starts empty for every request: nothing an earlier one left is found", function()
      -- one worker: the requests run one after another on the same Lua state, each
      -- leaving its marks behind for the next to (not) find
      for i = 1, 40 do
        local headers = i % 2 == 1 and { ["X-Mark"] = "m" .. i } or nil
        local res = assert(gw:get("/leftovers/" .. i, { headers = headers }))
        assert.equal(200, res.status)
        local seen = res:json().headers
        assert.same({ "nil", "nil", "none", "none" },
                    { seen["x-found-shared"], seen["x-found-plugin"],
                      seen["x-found-consumer"], seen["x-found-credential"] },
                    "request " .. i)
      end
      -- and a request that ended early (a 500 from a plugin) leaves nothing either
      assert.equal(500, assert(gw:get("/boom-access")).status)
      local seen = assert(gw:get("/leftovers/after")):json().headers
      assert.equal("none", seen["x-found-consumer"])
    end)
  end)

  describe("coroutines", function()
    it("waits in moongate.sleep without blocking the worker", function()
      local c1 = assert(helpers.connect(gw.port))
      local c2 = assert(helpers.connect(gw.port))
      assert(c1:send("GET /sleep/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      assert(c2:send("GET /sleep/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      local plain = assert(gw:get("/plain"))
      assert.equal(200, plain.status)
      -- answered while both still sleep: neither has a byte of its answer yet
      for _, c in ipairs({ c1, c2 }) do
        local got, err = c:receive(1, 0)
        assert.is_nil(got, "a sleeper answered before the plain route")
        assert.equal("timeout", err)
      end
      local r1 = assert(c1:read_response({ timeout = 5 }))
      local r2 = assert(c2:read_response({ timeout = 5 }))
      assert.equal(200, r1.status)
      assert.equal(200, r2.status)
      local h1, h2 = cjson.decode(r1.body).headers, cjson.decode(r2.body).headers
      -- the two sleeps overlapped (by the gateway's clock): they ran side by side
      assert.is_true(tonumber(h1["x-slept-from"]) < tonumber(h2["x-slept-until"])
                     and tonumber(h2["x-slept-from"]) < tonumber(h1["x-slept-until"]),
                     "the sleeps ran one after the other")
      local slept = tonumber(h1["x-slept"])
      assert.is_true(slept >= 0.55, "slept " .. slept)   -- never shorter than asked
    end)

    it("drops a sleeping request whose client left, and keeps serving", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("GET /sleep/gone HTTP/1.1\r\nHost: x\r\n\r\n"))
      helpers.sleep(0.1)
      c:close()
      helpers.sleep(0.8)
      assert.equal(200, assert(gw:get("/plain")).status)
      for _, r in ipairs(up:requests()) do
        assert.not_equal("/gone", r.path)               -- never proxied
      end
    end)
  end)
end)

describe("plugins: global rewrite", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      -- the setting (names) and a global plugin entity share the `plugins` key, as in Kong
      plugins = { "bundled", "rewriter", { name = "rewriter" } },
      services = { { name = "s", url = up.url, routes = { { paths = { "/" } } } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("runs a global plugin's rewrite handler for every request", function()
    local seen = assert(gw:get("/anything")):json()
    assert.equal("yes", seen.headers["x-rewritten"])
  end)

  it("can replace the upstream path, query and method", function()
    local seen = assert(gw:get("/orig?q=1", { headers = { ["X-Set-Path"] = "/new/place" } })):json()
    assert.equal("PUT", seen.method)
    assert.equal("/new/place?a=1&a=x%20y&b=2", seen.path)
  end)
end)

describe("plugins: configuration errors", function()
  local function check(extra)
    return helpers.check(settings(extra))
  end

  it("refuses a plugin that is not enabled", function()
    local code, lines = helpers.check({ lua_package_path = PLUGIN_PATH, plugins = { "bundled" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                     plugins = { { name = "headers" } } } } })
    assert.equal(1, code)
    assert.matches('services%[0%]%.plugins%[0%]%.name: plugin "headers" is not enabled', lines[1])
  end)

  it("refuses an enabled plugin that is not installed", function()
    local code, lines = helpers.check({ lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "no-such-plugin" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } } })
    assert.equal(1, code)
    assert.matches('plugins%[1%]: plugin "no%-such%-plugin" is enabled but cannot be loaded',
                   lines[1])
  end)

  it("refuses a plugin whose schema is broken, naming it", function()
    local code, lines = helpers.check({ lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "badschema" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } } })
    assert.equal(1, code)
    assert.matches('plugin "badschema"', lines[1])
  end)

  it("reports config errors against the plugin's schema with their path", function()
    local code, lines = check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                     plugins = { { name = "terminator" },
                                 { name = "sleeper", config = { seconds = "soon" } } } } } })
    assert.equal(1, code)
    assert.matches("services%[0%]%.plugins%[1%]%.config%.seconds: expected a number",
                   table.concat(lines, "\n"))
  end)

  it("fills defaults and accepts a valid config", function()
    local code = check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                     plugins = { { name = "terminator" }, { name = "sleeper",
                                                            config = { seconds = 1 } } } } } })
    assert.equal(0, code)
  end)
end)

describe("plugins: consumer scopes", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "whoami", "headers",
                  -- top-level entity scoped to a consumer and a route together
                  { name = "headers", consumer = "bob", route = "c-route",
                    config = { header = "X-Who", value = "bob-on-route" } } },
      consumers = {
        { username = "alice", plugins = { { name = "headers",
                                            config = { header = "X-Who", value = "alice" } } } },
        { username = "bob" },
        { username = "carol" },
      },
      services = { { name = "c", url = up.url,
        plugins = { { name = "whoami" } },
        routes = { { name = "c-route", paths = { "/c" },
                     plugins = { { name = "headers",
                                   config = { header = "X-Who", value = "route" } } } } } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function who(user)
    local res = assert(gw:get("/c/x", { headers = { ["X-User"] = user } }))
    assert.equal(200, res.status)
    return res:json().headers["x-who"], res.headers["x-consumer"]
  end

  it("applies a consumer's own configuration once the consumer is authenticated", function()
    assert.same({ "alice", "alice" }, { who("alice") })
  end)

  it("prefers consumer+route over the route's and the consumer's", function()
    assert.same({ "bob-on-route", "bob" }, { who("bob") })
  end)

  it("keeps the route's configuration for consumers without their own, and anonymously",
     function()
    assert.same({ "route", "carol" }, { who("carol") })
    assert.same({ "route", "anonymous" }, { who(nil) })
    assert.same({ "route", "anonymous" }, { who("nobody") })
  end)
end)
