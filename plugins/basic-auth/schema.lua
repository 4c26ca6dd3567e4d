--- basic-auth's configuration: Kong 3.x's fields and defaults (anonymous, hide_credentials,
-- realm = "service"). Kong's basic-auth has no run_on_preflight, so it is an unknown field
-- here as there. One addition: a realm with a control character is refused, since it would
-- have to go into a WWW-Authenticate header (Kong takes it and emits a broken header).
local typedefs = require "moongate.typedefs"

return {
  name = "basic-auth",
  fields = {
    -- Kong's typedefs.no_consumer: basic-auth is what identifies the consumer, so it cannot
    -- be configured on one (runtime.load refuses it with the path of the entity)
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { anonymous = typedefs.anonymous },
          { hide_credentials = { type = "boolean", required = true, default = false,
              description = "Remove the Authorization / Proxy-Authorization header the "
                            .. "credentials were read from before proxying." } },
          { realm = { type = "string", required = true, default = "service", len_min = 1,
                      not_match = "%c",
              description = "The realm of the WWW-Authenticate challenge sent with every "
                            .. "401 (Basic realm=\"<realm>\")." } },
        },
    } },
  },
}
