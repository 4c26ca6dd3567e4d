--- bot-detection's configuration: Kong 3.x's fields and defaults. Every entry is a regex on
-- the User-Agent, compiled with PCRE2 at config load (`is_regex`), so a bad one is refused
-- with its path instead of failing requests later.
local typedefs = require "moongate.typedefs"

return {
  name = "bot-detection",
  fields = {
    -- Kong's typedefs.no_consumer: the plugin cannot be applied to a consumer (it runs
    -- before any authentication could identify one).
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { allow = { type = "array", default = {},
                      elements = { type = "string", is_regex = true },
                      description = "Regexes on the User-Agent that are let through; they "
                                    .. "override both deny and the built-in bot list." } },
          { deny = { type = "array", default = {},
                     elements = { type = "string", is_regex = true },
                     description = "Regexes on the User-Agent that are refused, in "
                                   .. "addition to the built-in bot list." } },
        },
    } },
  },
}
