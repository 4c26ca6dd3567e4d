--- mtls-auth: authenticates a request by the TLS client certificate of its connection,
-- verified against the plugin's ca_certificates (chain, validity, clientAuth usage; done
-- in C once per handshake for every mtls-auth CA list, see README "Client certificates"),
-- then mapped to a consumer: the certificate's subject names (DNS, URI and email SANs, then
-- the subject CN) are matched against the consumers' username and/or custom_id
-- (consumer_by), falling back to default_consumer. Kong Enterprise's behaviour and 401
-- messages: no certificate → "No required TLS certificate was sent"; a certificate that
-- does not verify, or matches no consumer → "TLS certificate failed verification"; both
-- fall back to `anonymous` when set. With skip_consumer_lookup a verified certificate is
-- enough: its CN (or DN) becomes the authenticated group the acl plugin reads.
local auth = require "moongate.auth"
local consumers = require "moongate.consumers"

local ipairs = ipairs

local MtlsAuth = { PRIORITY = 1600, VERSION = "1.0.0" }

local NO_CERT = "No required TLS certificate was sent"
local FAILED = "TLS certificate failed verification"

-- The certificate's names in lookup order: SANs (DNS, URI, email, as written), then CN.
local function subject_names(cert)
  local names = {}
  for _, san in ipairs(cert.san_list) do
    local kind, value = san:match("^(%a+):(.*)$")
    if kind ~= "IP" and value ~= "" then names[#names + 1] = value end
  end
  if cert.cn ~= "" then names[#names + 1] = cert.cn end
  return names
end

local function find_consumer(conf, cert)
  for _, name in ipairs(subject_names(cert)) do
    for _, field in ipairs(conf.consumer_by or {}) do
      local c = consumers.get_by(field, name)
      if c then return c, name end
    end
  end
  if conf.default_consumer then
    local c = consumers.get(conf.default_consumer, true)
    if not c then
      error("default consumer \"" .. conf.default_consumer
            .. "\" is configured but doesn't exist", 0)
    end
    return c, cert.cn
  end
  return nil
end

function MtlsAuth:access(conf)
  if auth.skip(conf) then return end
  local tls = moongate.client.tls
  local ok, err = tls.verify_client(conf.ca_certificates, conf.allow_partial_chain)
  if ok == nil then return auth.reject(conf, 401, NO_CERT) end
  if not ok then
    moongate.log.info("mtls-auth: client certificate refused: ", err)
    return auth.reject(conf, 401, FAILED)
  end
  local cert = tls.get_client_certificate()
  if conf.skip_consumer_lookup then
    local group = conf.authenticated_group_by == "DN" and cert.subject_dn or cert.cn
    moongate.ctx.shared.authenticated_groups = { group }
    return auth.set_consumer(nil, { id = cert.fingerprint, subject_name = group }, group)
  end
  local consumer, name = find_consumer(conf, cert)
  if not consumer then
    moongate.log.info("mtls-auth: no consumer matches the certificate of ", cert.subject_dn)
    return auth.reject(conf, 401, FAILED)
  end
  auth.set_consumer(consumer, { id = cert.fingerprint, subject_name = name,
                                consumer = { id = consumer.id } }, name)
end

return MtlsAuth
