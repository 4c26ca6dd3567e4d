--- key-auth's configuration: Kong 3.x's fields and defaults.
local typedefs = require "moongate.typedefs"
return {
  name = "key-auth",
  fields = {
    -- Kong's typedefs.no_consumer: not configurable on a consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { key_names = { type = "array", required = true, len_min = 1, default = { "apikey" },
                          elements = { type = "string", match = "^[%w%-_]+$" } } },
          { hide_credentials = { type = "boolean", required = true, default = false } },
          { anonymous = typedefs.anonymous },
          { key_in_header = { type = "boolean", required = true, default = true } },
          { key_in_query = { type = "boolean", required = true, default = true } },
          { key_in_body = { type = "boolean", required = true, default = false } },
          { run_on_preflight = { type = "boolean", required = true, default = true } },
          -- no control characters: the realm goes into a response header
          { realm = { type = "string", len_min = 1, not_match = "%c" } },
        },
    } },
  },
}
