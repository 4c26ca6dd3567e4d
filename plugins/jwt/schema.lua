--- jwt's configuration: Kong 3.x's fields, defaults and entity check (maximum_expiration
-- needs "exp" among claims_to_verify).
local typedefs = require "moongate.typedefs"
return {
  name = "jwt",
  fields = {
    -- Kong's typedefs.no_consumer: not configurable on a consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { uri_param_names = { type = "set", elements = { type = "string" },
              default = { "jwt" },
              description = "Query arguments a token is looked for in." } },
          { cookie_names = { type = "set", elements = { type = "string" }, default = {},
              description = "Cookies a token is looked for in." } },
          { key_claim_name = { type = "string", default = "iss",
              description = "The claim (or header field) naming the jwt_secrets key." } },
          { secret_is_base64 = { type = "boolean", default = false,
              description = "HS* secrets are stored base64-encoded." } },
          { claims_to_verify = { type = "set",
              elements = { type = "string", one_of = { "exp", "nbf" } },
              description = "Registered claims that must be present and valid." } },
          { anonymous = typedefs.anonymous },
          { run_on_preflight = { type = "boolean", default = true,
              description = "Authenticate OPTIONS preflight requests too." } },
          { maximum_expiration = { type = "number", default = 0, between = { 0, 31536000 },
              description = "Longest allowed token lifetime left, in seconds (0: any)." } },
          { header_names = { type = "set", elements = { type = "string" },
              default = { "authorization" },
              description = "Headers a 'Bearer <token>' is looked for in." } },
          -- no control characters: the realm goes into a response header
          { realm = { type = "string", len_min = 1, match = "^[^%c]+$",
              description = "Realm of the WWW-Authenticate challenge." } },
        },
    } },
  },
  entity_checks = {
    { conditional = {
        if_field = "config.maximum_expiration", if_match = { gt = 0 },
        then_field = "config.claims_to_verify", then_match = { contains = "exp" },
    } },
  },
}
