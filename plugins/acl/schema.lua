--- acl's configuration: Kong 3.x's fields; exactly one of allow / deny.
local typedefs = require "moongate.typedefs"
return {
  name = "acl",
  fields = {
    -- Kong's typedefs.no_consumer: not configurable on a consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { allow = { type = "array", elements = { type = "string", len_min = 1 } } },
          { deny = { type = "array", elements = { type = "string", len_min = 1 } } },
          { hide_groups_header = { type = "boolean", required = true, default = false } },
          { always_use_authenticated_groups = { type = "boolean", required = true,
                                                default = false } },
        },
    } },
  },
  entity_checks = {
    { only_one_of = { "config.allow", "config.deny" } },
    { at_least_one_of = { "config.allow", "config.deny" } },
  },
}
