-- The hot PDK path compiles: header get/set, method and path in a loop, watched by jit.v,
-- produce traces and no "NYI" (not-yet-implemented) aborts — they are FFI calls, not classic
-- C-API calls, which is the point of the bridge.

local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("PDK hot path", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "jitcheck" },
      services = { { name = "s", url = up.url, routes = {
        { name = "j", paths = { "/j" }, plugins = { { name = "jitcheck" } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("compiles get_header/get_method/get_path/set_header in a loop without NYI", function()
    local res = assert(gw:get("/j", { headers = { ["X-In"] = "value" } }))
    assert.equal(200, res.status)
    local report = res.body
    assert.matches("%[TRACE%s+%d+ ", report)             -- something was compiled
    assert.not_matches("NYI", report, report)
  end)
end)
