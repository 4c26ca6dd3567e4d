-- The example third-party plugin (examples/moongate-plugin-request-stamp) the way its author
-- and its users meet it: `luarocks make` installs the rock into a tree, offline; a gateway
-- with that tree on lua_package_path and the plugin enabled loads it and stamps requests;
-- and the plugin's own specs pass when run with busted against the installed rocks only
-- (the plugin's and moongate's, whose rockspec must therefore ship every module the spec
-- helpers and the PDK kit need).
local helpers = require "spec.helpers"

local ROOT = os.getenv("PWD")
local EXAMPLE = ROOT .. "/examples/moongate-plugin-request-stamp"
local ROCKSPEC = "moongate-plugin-request-stamp-0.1.0-1.rockspec"
local q = helpers.shell_quote

local function luarocks_make(dir, rockspec, tree)
  local out, rc = helpers.run("cd " .. q(dir) .. " && luarocks --lua-version 5.1 make"
    .. " --deps-mode=none --tree " .. q(tree) .. " " .. q(rockspec) .. " 2>&1")
  assert(rc == 0, "luarocks make " .. rockspec .. " failed:\n" .. out)
end

describe("example plugin request-stamp, installed as a rock", function()
  local tree, lua_dir, up, gw

  lazy_setup(function()
    local out, rc = helpers.run("mktemp -d /tmp/moongate-spec.rocks.XXXXXX")
    assert(rc == 0, out)
    tree = out:match("^(%S+)")
    lua_dir = tree .. "/share/lua/5.1"
    luarocks_make(EXAMPLE, ROCKSPEC, tree)
    luarocks_make(ROOT, "rockspec/moongate-0.1.0-1.rockspec", tree)

    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = lua_dir .. "/?.lua;;",
      plugins = { "bundled", "request-stamp" },
      services = {
        { name = "orders", url = up.url,
          routes = { { name = "orders", paths = { "/orders" } } },
          plugins = { { name = "request-stamp",
                        config = { header_name = "X-Trace", separator = "|",
                                   parts = { "method", "path", "query", "client_ip" } } } } },
        { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if tree and tree:match("^/tmp/moongate%-spec%.rocks%.") then
      os.execute("rm -rf " .. q(tree))
    end
  end)

  it("installs the handler and schema modules under moongate.plugins.request-stamp", function()
    for _, f in ipairs({ "handler.lua", "schema.lua" }) do
      assert.is_truthy(helpers.read_file(lua_dir .. "/moongate/plugins/request-stamp/" .. f),
                       f .. " was not installed")
    end
  end)

  it("stamps the upstream request and echoes the stamp, on the routes it is configured on",
     function()
    local res = assert(gw:get("/orders/42?expand=items"))
    assert.equal(200, res.status)
    local want = "GET|/orders/42|expand=items|127.0.0.1"
    assert.equal(want, res:json().headers["x-trace"])
    assert.equal(want, res.headers["x-trace"])

    local plain = assert(gw:get("/plain/x"))
    assert.is_nil(plain:json().headers["x-trace"])
    assert.is_nil(plain.headers["x-trace"])
  end)

  it("cannot be enabled when its tree is not on lua_package_path", function()
    local code, lines = helpers.check({
      plugins = { "bundled", "request-stamp" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
    })
    assert.equal(1, code)
    assert.matches('plugins%[1%]: plugin "request%-stamp" is enabled but cannot be loaded',
                   table.concat(lines, "\n"))
  end)

  it("passes its own specs, run with busted against the installed rocks", function()
    local bin = os.getenv("MOONGATE_BIN") or (ROOT .. "/build/moongate")
    if bin:sub(1, 1) ~= "/" then bin = ROOT .. "/" .. bin end
    -- from inside the tree, so that nothing from this checkout is on the path
    local cmd = "cd " .. q(tree) .. " && env"
      .. " LUA_PATH=" .. q(lua_dir .. "/?.lua;" .. lua_dir .. "/?/init.lua;;")
      .. " MOONGATE_BIN=" .. q(bin)
      .. " luajit /usr/bin/busted -o TAP " .. q(EXAMPLE .. "/spec") .. " 2>&1"
    local out, rc = helpers.run(cmd)
    local ok = select(2, out:gsub("\nok %d+", "")) + (out:match("^ok %d+") and 1 or 0)
    local failed = select(2, out:gsub("not ok %d+", ""))
    assert.equal(0, rc, "the example's specs failed:\n" .. out)
    assert.equal(0, failed, out)
    assert.is_true(ok >= 8, "expected at least 8 passing tests:\n" .. out)
    assert.matches("ok %d+ %- request%-stamp handler ", out)   -- the kit-based unit spec
    assert.matches("ok %d+ %- request%-stamp sends ", out)     -- the end-to-end spec
  end)
end)
