--- mtls-auth's configuration: Kong Enterprise's fields and defaults, except
-- revocation_check_mode, whose default here is SKIP: moongate does not fetch CRLs or ask
-- OCSP responders, so IGNORE_CA_ERROR and STRICT are refused rather than silently not done.
-- The fields that only serve revocation checks (http_timeout, cert_cache_ttl, the HTTP(S)
-- proxy) are accepted, so that exported Kong configs load, and have no effect.
local typedefs = require "moongate.typedefs"

local PORT = { type = "integer", between = { 0, 65535 } }

return {
  name = "mtls-auth",
  fields = {
    -- Kong's typedefs.no_consumer: the certificate identifies the consumer
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          { anonymous = typedefs.anonymous },
          { consumer_by = { type = "array", required = false,
              default = { "username", "custom_id" },
              elements = { type = "string", one_of = { "username", "custom_id" } },
              description = "Which consumer fields the certificate's subject names (SANs, "
                            .. "then the CN) are matched against; [] turns matching off." } },
          { ca_certificates = { type = "array", required = true, len_min = 1,
              elements = { type = "string", len_min = 1 },
              description = "The ids of the ca_certificates a client certificate must chain "
                            .. "to." } },
          { cache_ttl = { type = "number", required = true, default = 60, gt = 0,
              description = "Kong's consumer lookup cache; moongate's lookups are in memory, "
                            .. "so it has no effect." } },
          { skip_consumer_lookup = { type = "boolean", required = true, default = false,
              description = "Accept any certificate that verifies, without a consumer; "
                            .. "authenticated_group_by names its group (for acl)." } },
          { allow_partial_chain = { type = "boolean", required = true, default = false,
              description = "Accept a chain that ends at an intermediate listed in "
                            .. "ca_certificates, without its root." } },
          { authenticated_group_by = { type = "string", required = false, default = "CN",
              one_of = { "CN", "DN" },
              description = "With skip_consumer_lookup: the certificate's CN or subject DN "
                            .. "becomes the authenticated group." } },
          { revocation_check_mode = { type = "string", required = false, default = "SKIP",
              one_of = { "SKIP", "IGNORE_CA_ERROR", "STRICT" },
              custom_validator = function(v)
                if v ~= "SKIP" then
                  return nil, "revocation checks (OCSP, CRL) are not supported: only SKIP"
                end
                return true
              end,
              description = "Only SKIP: moongate does not check revocation (see README)." } },
          { http_timeout = { type = "number", default = 30000, gt = 0,
              description = "Revocation checks only: no effect." } },
          { cert_cache_ttl = { type = "number", default = 60000, gt = 0,
              description = "Revocation checks only: no effect." } },
          { http_proxy_host = { type = "string", len_min = 1,
              description = "Revocation checks only: no effect." } },
          { http_proxy_port = PORT },
          { https_proxy_host = { type = "string", len_min = 1,
              description = "Revocation checks only: no effect." } },
          { https_proxy_port = PORT },
          { send_ca_dn = { type = "boolean", required = false, default = false,
              description = "Name this plugin's CAs in the CertificateRequest of every ssl "
                            .. "listener." } },
          { default_consumer = { type = "string", len_min = 1,
              description = "The id or username of the consumer a verified certificate that "
                            .. "matches no consumer authenticates as." } },
        },
    } },
  },
}
