-- request-stamp against the real gateway: a config with the plugin on a few routes, an echo
-- upstream that reports what it received, and requests through the gateway. Needs the
-- moongate binary (MOONGATE_BIN, default ./build/moongate) and moongate.spec.helpers on the
-- path (from the moongate rock or a moongate checkout's lua/ directory).
local helpers = require "moongate.spec.helpers"

-- The gateway loads the plugin from wherever this busted process finds it: an installed
-- tree on LUA_PATH, or this checkout with --lpath='./?.lua'.
local function plugin_package_path()
  local file = package.searchpath("moongate.plugins.request-stamp.handler", package.path)
  assert(file, "moongate.plugins.request-stamp.handler is not on package.path")
  local root = file:gsub("moongate/plugins/request%-stamp/handler%.lua$", "")
  if root:sub(1, 1) ~= "/" then
    root = os.getenv("PWD") .. "/" .. root:gsub("^%./", "")
  end
  return root .. "?.lua;;"
end

local function service(name, url, path, config)
  return { name = name, url = url,
           routes = { { name = name, paths = { path } } },
           plugins = { { name = "request-stamp", config = config } } }
end

describe("request-stamp", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = plugin_package_path(),
      plugins = { "bundled", "request-stamp" },
      services = {
        service("default", up.url, "/default", {}),
        service("custom", up.url, "/custom", { header_name = "X-Trace", separator = "|",
                                               parts = { "method", "query", "host" },
                                               echo = false }),
        service("append", up.url, "/append", { on_conflict = "append", parts = { "path" } }),
        service("preserve", up.url, "/preserve", { on_conflict = "preserve" }),
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("sends METHOD PATH REQUEST-ID CLIENT-IP upstream and echoes it to the client", function()
    local res = assert(gw:get("/default/orders?page=2"))
    assert.equal(200, res.status)
    local rid = res.headers["x-request-id"]
    assert.matches("^%x+$", rid)
    local want = "GET /default/orders " .. rid .. " 127.0.0.1"
    assert.equal(want, res:json().headers["x-request-stamp"])
    assert.equal(want, res.headers["x-request-stamp"])
  end)

  it("builds the stamp from the configured parts, and can keep it from the client", function()
    local res = assert(gw:get("/custom/x?a=1&b=2", { headers = { Host = "shop.example" } }))
    assert.equal("GET|a=1&b=2|shop.example", res:json().headers["x-trace"])
    assert.is_nil(res.headers["x-trace"])
  end)

  it("replaces a stamp the client sent by default", function()
    local res = assert(gw:get("/default/x", { headers = { ["X-Request-Stamp"] = "forged" } }))
    local seen = res:json().headers["x-request-stamp"]
    assert.matches("^GET /default/x %x+ 127%.0%.0%.1$", seen)
  end)

  it("appends to or preserves the client's stamp when configured to", function()
    local res = assert(gw:get("/append/x", { headers = { ["X-Request-Stamp"] = "client" } }))
    assert.same({ "client", "/append/x" }, res:json().headers["x-request-stamp"])
    assert.equal("/append/x", res.headers["x-request-stamp"])

    res = assert(gw:get("/preserve/x", { headers = { ["X-Request-Stamp"] = "client" } }))
    assert.equal("client", res:json().headers["x-request-stamp"])
    assert.equal("client", res.headers["x-request-stamp"])
  end)

  it("is refused by `moongate check` with a bad config, every problem with its path", function()
    local code, lines = helpers.check({
      lua_package_path = plugin_package_path(),
      plugins = { "bundled", "request-stamp" },
      services = { service("bad", "http://127.0.0.1:9", "/bad", {
        header_name = "Bad Header", parts = { "method", "cookie" }, on_conflict = "merge" }) },
    })
    assert.equal(1, code)
    local out = table.concat(lines, "\n")
    assert.matches("services%[0%]%.plugins%[0%]%.config%.header_name: must be a header name", out)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.parts%[1%]: expected one of: method, "
                   .. "path, query, host, request_id, client_ip, consumer", out)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.on_conflict: expected one of: "
                   .. "override, append, preserve", out)
  end)
end)
