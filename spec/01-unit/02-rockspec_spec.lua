-- The moongate rock installs the spec helpers under their module names, so that a plugin
-- author's busted specs can `require "moongate.spec.helpers"` from a LuaRocks tree.
local helpers = require "spec.helpers"

describe("rockspec/moongate-0.1.0-1.rockspec", function()
  it("installs moongate.spec.helpers and moongate.spec.upstream with `luarocks make`", function()
    local tree = os.tmpname()
    os.remove(tree)
    local cmd = "luarocks --lua-version 5.1 make --deps-mode=none --tree " .. tree
      .. " rockspec/moongate-0.1.0-1.rockspec >/dev/null 2>&1"
    local rc = os.execute(cmd)
    assert.is_true(rc == 0 or rc == true, "luarocks make failed")
    local dir = tree .. "/share/lua/5.1/moongate/spec/"
    for _, f in ipairs({ "helpers.lua", "upstream.lua" }) do
      local fh = io.open(dir .. f)
      assert.is_truthy(fh, dir .. f .. " was not installed")
      fh:close()
    end
    -- the installed copy loads on its own, found through the tree's path only
    local p = io.popen("cd / && luajit -e 'package.path=\"" .. tree
      .. "/share/lua/5.1/?.lua;\"..package.path; local h = require \"moongate.spec.helpers\";"
      .. " io.write(type(h.start), type(h.upstream))' 2>&1")
    local out = p:read("*a")
    p:close()
    os.execute("rm -rf " .. tree)
    assert.equal("functionfunction", out)
    assert.is_function(helpers.start)
  end)
end)
