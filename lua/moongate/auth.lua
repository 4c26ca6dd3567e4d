--- moongate.auth: what every authentication plugin does the same way, in Kong 3.x's shape, so
-- key-auth, basic-auth, jwt, hmac-auth (and third-party plugins) agree on it:
--  * set_consumer: record the consumer with moongate.client.authenticate and tell the
--    upstream who it is (X-Consumer-ID, X-Consumer-Custom-ID, X-Consumer-Username,
--    X-Credential-Identifier, X-Anonymous-Consumer), clearing any the client sent;
--  * skip: with `anonymous` set and a credential already found by an earlier plugin, this
--    one has nothing to do (two auth plugins with `anonymous` form a logical OR);
--  * reject: answer the failure, or fall back to the anonymous consumer when configured.
local consumers = require "moongate.consumers"

local _M = {}

local CONSUMER_ID = "X-Consumer-ID"
local CONSUMER_CUSTOM_ID = "X-Consumer-Custom-ID"
local CONSUMER_USERNAME = "X-Consumer-Username"
local CREDENTIAL_IDENTIFIER = "X-Credential-Identifier"
local ANONYMOUS = "X-Anonymous-Consumer"

--- Authenticates the request as `consumer` with `credential` (nil for the anonymous
-- consumer); `identifier` is what X-Credential-Identifier says (the credential's id for
-- key-auth, its username for basic-auth and hmac-auth, its key for jwt).
function _M.set_consumer(consumer, credential, identifier)
  local kong = moongate
  kong.client.authenticate(consumer, credential)
  local set, clear = kong.service.request.set_header, kong.service.request.clear_header
  if consumer and consumer.id then set(CONSUMER_ID, consumer.id) else clear(CONSUMER_ID) end
  if consumer and consumer.custom_id then
    set(CONSUMER_CUSTOM_ID, consumer.custom_id)
  else
    clear(CONSUMER_CUSTOM_ID)
  end
  if consumer and consumer.username then
    set(CONSUMER_USERNAME, consumer.username)
  else
    clear(CONSUMER_USERNAME)
  end
  if credential and identifier then
    set(CREDENTIAL_IDENTIFIER, identifier)
  else
    clear(CREDENTIAL_IDENTIFIER)
  end
  if credential then clear(ANONYMOUS) else set(ANONYMOUS, "true") end
end

--- True when this plugin should not run: `anonymous` is configured and an earlier
-- authentication plugin already identified a credential (Kong's logical OR).
function _M.skip(conf)
  return conf.anonymous ~= nil and conf.anonymous ~= "" and
         moongate.client.get_credential() ~= nil
end

--- Ends an unauthenticated request: with `conf.anonymous`, the request goes on as the
-- anonymous consumer (looked up by id, then username); otherwise it is answered with
-- status and {"message": message} and the given headers. An anonymous consumer that does
-- not exist is a configuration error: the request fails with 500 and the log says why.
function _M.reject(conf, status, message, headers)
  local anon = conf.anonymous
  if anon ~= nil and anon ~= "" then
    local consumer = consumers.get(anon, true)
    if not consumer then
      error("anonymous consumer \"" .. anon .. "\" is configured but doesn't exist", 0)
    end
    return _M.set_consumer(consumer, nil)
  end
  return moongate.response.exit(status, { message = message }, headers)
end

--- A WWW-Authenticate value (RFC 9110 11.6.1): the scheme, then realm="..." when a realm is
-- given (a quoted-string: '"' and '\' escaped, so a realm can never break the header), then
-- `params` (more auth-params, already formatted), comma-separated.
function _M.challenge(scheme, realm, params)
  local out = scheme
  local sep = " "
  if realm then
    out = out .. sep .. 'realm="' .. realm:gsub('[\\"]', "\\%0") .. '"'
    sep = ", "
  end
  if params then out = out .. sep .. params end
  return out
end

--- True for a CORS preflight the plugin is configured not to check (run_on_preflight off).
function _M.preflight_skipped(conf)
  return conf.run_on_preflight == false and moongate.request.get_method() == "OPTIONS"
end

return _M
