-- moongate's Lua side, as a rock: today the spec helpers (`moongate.spec.helpers`) and the
-- echo upstream they start (`moongate.spec.upstream`), so plugin authors can test their
-- routes with busted against the real binary. Install from a checkout, no network needed:
--   luarocks make --tree lua_modules rockspec/moongate-0.1.0-1.rockspec
package = "moongate"
version = "0.1.0-1"
source = { url = "git+file:///moongate" }
description = {
  summary = "moongate API gateway: Lua modules and busted helpers",
  homepage = "https://example.invalid/moongate",
  license = "Apache-2.0",
}
dependencies = { "lua >= 5.1", "luasocket", "lua-cjson" }
build = {
  type = "builtin",
  modules = {
    ["moongate.spec.helpers"] = "lua/moongate/spec/helpers.lua",
    ["moongate.spec.upstream"] = "lua/moongate/spec/upstream.lua",
    ["moongate.spec.pki"] = "lua/moongate/spec/pki.lua",
    -- the in-process PDK kit for unit-testing handlers, and the two modules it reuses
    ["moongate.spec.pdk"] = "lua/moongate/spec/pdk.lua",
    ["moongate.sha1"] = "lua/moongate/sha1.lua",
    ["moongate.codec"] = "lua/moongate/codec.lua",
    ["moongate.phases"] = "lua/moongate/phases.lua",
    ["moongate.schema"] = "lua/moongate/schema.lua",
    ["moongate.http"] = "lua/moongate/http.lua",
    ["moongate.redis"] = "lua/moongate/redis.lua",
    -- what authentication plugins share (schema.lua compiles is_regex with moongate.re)
    ["moongate.re"] = "lua/moongate/re.lua",
    ["moongate.crypto"] = "lua/moongate/crypto.lua",
    ["moongate.consumers"] = "lua/moongate/consumers.lua",
    ["moongate.auth"] = "lua/moongate/auth.lua",
    ["moongate.typedefs"] = "lua/moongate/typedefs.lua",
  },
}
