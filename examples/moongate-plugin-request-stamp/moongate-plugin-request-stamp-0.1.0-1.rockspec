-- A moongate plugin as a rock: it installs the plugin's two modules under the names the
-- gateway looks for (moongate.plugins.<name>.handler and .schema). Build and install without
-- network, from this directory:
--   luarocks --lua-version 5.1 make --deps-mode=none --tree /opt/moongate/plugins \
--     moongate-plugin-request-stamp-0.1.0-1.rockspec
-- then, in moongate.yaml:
--   lua_package_path: "/opt/moongate/plugins/share/lua/5.1/?.lua;;"
--   plugins: [bundled, request-stamp]
package = "moongate-plugin-request-stamp"
version = "0.1.0-1"
source = { url = "git+https://example.invalid/moongate-plugin-request-stamp.git", tag = "0.1.0" }
description = {
  summary = "moongate plugin: stamps requests with a header built from the request",
  detailed = [[
Adds a configurable header to the request the service receives, built from the request's
method, path, query, host, request id, client address or consumer, and echoes it to the
client in the response.]],
  homepage = "https://example.invalid/moongate-plugin-request-stamp",
  license = "Apache-2.0",
}
dependencies = { "lua >= 5.1" }
build = {
  type = "builtin",
  modules = {
    ["moongate.plugins.request-stamp.handler"] = "moongate/plugins/request-stamp/handler.lua",
    ["moongate.plugins.request-stamp.schema"] = "moongate/plugins/request-stamp/schema.lua",
  },
}
