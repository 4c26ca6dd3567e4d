--- cors's configuration: Kong 3.x's fields, defaults and messages (Kong's
-- kong/plugins/cors/schema.lua, Apache-2.0). An origin entry is "*" or anything that compiles
-- as a regex (a plain origin such as "https://example.com" does); a bad one is refused at
-- load with Kong's message "'<entry>' is not a valid regex", followed here by PCRE2's reason.
local typedefs = require "moongate.typedefs"
local re = require "moongate.re"

local tostring = tostring

local METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE",
                  "CONNECT" }

-- The handler runs a regex entry, less a leading "^", as "(?:" .. entry .. "\E)\z" anchored
-- at the start (handler.lua builds the same string; \E closes a trailing \Q): refusing here
-- what would not compile there keeps every config `moongate check` accepts usable at run time.
local function validate_asterisk_or_regex(value)
  if value == "*" then return true end
  local ok, err = re.valid(value)
  if not ok then
    return nil, "'" .. tostring(value) .. "' is not a valid regex: " .. tostring(err)
  end
  local body = value:sub(1, 1) == "^" and value:sub(2) or value
  if not re.valid("(?:" .. body .. "\\E)\\z", "a") then
    return nil, "'" .. tostring(value) .. "' is not a valid regex: it cannot be anchored"
  end
  return true
end

return {
  name = "cors",
  fields = {
    -- Kong's typedefs.no_consumer: not configurable on a consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { origins = { type = "array",
              description = "Allowed origins: \"*\", exact origins (scheme://host[:port], or "
                .. "a bare host) or regexes; empty or absent means \"*\".",
              elements = { type = "string", custom_validator = validate_asterisk_or_regex } } },
          { headers = { type = "array", elements = { type = "string" },
              description = "Access-Control-Allow-Headers on a preflight; when empty, the "
                .. "request's Access-Control-Request-Headers is echoed." } },
          { exposed_headers = { type = "array", elements = { type = "string" },
              description = "Access-Control-Expose-Headers on non-preflight responses." } },
          { methods = { type = "array", default = METHODS,
              elements = { type = "string", one_of = METHODS },
              description = "Access-Control-Allow-Methods on a preflight." } },
          { max_age = { type = "number",
              description = "Access-Control-Max-Age on a preflight, in seconds." } },
          { credentials = { type = "boolean", required = true, default = false,
              description = "Send Access-Control-Allow-Credentials: true (with \"*\" origins "
                .. "the request's Origin is echoed instead of \"*\")." } },
          { private_network = { type = "boolean", required = true, default = false,
              description = "Answer Access-Control-Request-Private-Network: true on a "
                .. "preflight with Access-Control-Allow-Private-Network: true." } },
          { preflight_continue = { type = "boolean", required = true, default = false,
              description = "Proxy preflight requests to the upstream instead of answering "
                .. "them at the gateway." } },
          { allow_origin_absent = { type = "boolean", required = true, default = true,
              description = "Add the CORS headers to responses to requests without an "
                .. "Origin header (false: leave those responses alone)." } },
        },
    } },
  },
}
