--- basic-auth: authenticates a request by the username and password of an HTTP Basic
-- `Proxy-Authorization` or `Authorization` header (RFC 7617), checked against the consumers'
-- basicauth_credentials. Kong 3.x's behaviour: Proxy-Authorization is tried first and its
-- credentials are used when its username is known, otherwise Authorization; every failure
-- (no header, a malformed one, an unknown user, a wrong password) is the same 401
-- {"message":"Unauthorized"} with `WWW-Authenticate: Basic realm="<realm>"`.
-- Where it does better than Kong: the header is parsed strictly (scheme then one base64
-- token, nothing else), an unknown username costs the same PBKDF2 work as a wrong password
-- (no user enumeration by timing), and the realm is quoted safely.
local auth = require "moongate.auth"
local consumers = require "moongate.consumers"
local crypto = require "moongate.crypto"

local find, sub, match = string.find, string.sub, string.match
local tonumber, setmetatable = tonumber, setmetatable
local decode_base64 = crypto.decode_base64

local BasicAuth = { PRIORITY = 1100, VERSION = "1.0.0" }

local UNAUTHORIZED = "Unauthorized"
local KIND = "basicauth_credentials"
local PROXY_AUTHORIZATION = "Proxy-Authorization"
local AUTHORIZATION = "Authorization"

-- "Basic" (any case), at least one space, one token68 of the base64 alphabet, and nothing
-- else (the runtime already strips the header value's surrounding whitespace).
local BASIC = "^[Bb][Aa][Ss][Ii][Cc] +([%w+/]+=?=?)$"

local challenge_of = setmetatable({}, { __mode = "k" })   -- conf -> { WWW-Authenticate }
local function challenge(conf)
  local c = challenge_of[conf]
  if not c then
    c = { ["WWW-Authenticate"] = auth.challenge("Basic", conf.realm or "service") }
    challenge_of[conf] = c
  end
  return c
end

-- The username and password of a Basic header value; nil when it is not one. The password
-- is everything after the first colon (it may hold colons); the username must not be empty.
-- Control characters are refused (RFC 7617 section 2 forbids them): besides, PBKDF2 pads
-- its HMAC key with zeros, so "pw" and "pw\0" would otherwise be the same password.
local function parse(value)
  local token = match(value, BASIC)
  if not token then return nil end
  local decoded = decode_base64(token)
  if not decoded or find(decoded, "%c") then return nil end
  local colon = find(decoded, ":", 1, true)
  if not colon or colon == 1 then return nil end
  return sub(decoded, 1, colon - 1), sub(decoded, colon + 1)
end

function BasicAuth:access(conf)
  if auth.skip(conf) then return end
  local request = moongate.request
  local proxy = request.get_header(PROXY_AUTHORIZATION)
  local authorization = request.get_header(AUTHORIZATION)
  if not proxy and not authorization then
    return auth.reject(conf, 401, UNAUTHORIZED, challenge(conf))
  end
  local log, service = moongate.log, moongate.service.request
  local hide = conf.hide_credentials

  local credential, consumer, password
  if proxy then
    log.redact_header(PROXY_AUTHORIZATION)
    if hide then service.clear_header(PROXY_AUTHORIZATION) end
    local username
    username, password = parse(proxy)
    if username then credential, consumer = consumers.find_credential(KIND, username) end
  end
  -- as Kong: Authorization is looked at when Proxy-Authorization names no known user (and
  -- then hidden too), and passes through untouched when Proxy-Authorization did
  if not credential and authorization then
    log.redact_header(AUTHORIZATION)
    if hide then service.clear_header(AUTHORIZATION) end
    local username
    username, password = parse(authorization)
    if username then credential, consumer = consumers.find_credential(KIND, username) end
  end

  if not credential then
    -- same work and same answer as a wrong password: the username's existence stays secret
    consumers.verify_unknown(password)
    return auth.reject(conf, 401, UNAUTHORIZED, challenge(conf))
  end
  if not consumers.verify_password(credential, password) then
    return auth.reject(conf, 401, UNAUTHORIZED, challenge(conf))
  end
  auth.set_consumer(consumer, credential, credential.username)
end

return BasicAuth
