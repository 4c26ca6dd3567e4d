--- hmac-auth's configuration: Kong 3.x's fields, defaults and checks, so a Kong user's
-- kong.yml for the plugin loads unchanged.
local typedefs = require "moongate.typedefs"
local ALGORITHMS = { "hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512" }

return {
  name = "hmac-auth",
  fields = {
    -- Kong's typedefs.no_consumer: not configurable on a consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { hide_credentials = { type = "boolean", required = true, default = false,
              description = "Remove the Authorization (or Proxy-Authorization) header the "
                            .. "signature came in before proxying." } },
          { clock_skew = { type = "number", required = true, default = 300, gt = 0,
              description = "How far (seconds) the Date / X-Date header may be from the "
                            .. "gateway's clock, in either direction." } },
          { anonymous = typedefs.anonymous },
          { validate_request_body = { type = "boolean", required = true, default = false,
              description = "Check the Digest header (SHA-256=<base64 sha256 of the body>) "
                            .. "against the body." } },
          { enforce_headers = { type = "array", required = true, default = {},
              elements = { type = "string" },
              description = "Headers (or request-line, @request-target) every signature "
                            .. "must cover." } },
          { algorithms = { type = "array", required = true, default = ALGORITHMS,
              elements = { type = "string", one_of = ALGORITHMS },
              description = "The HMAC algorithms clients may sign with." } },
          -- no control characters: the realm goes into a response header
          { realm = { type = "string", len_min = 1, not_match = "%c",
              description = "Realm of the WWW-Authenticate challenge on 401 answers." } },
        },
    } },
  },
}
