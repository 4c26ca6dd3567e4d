--- jwt: authenticates a request by a signed JSON Web Token (compact JWS) found in the query
-- string, a cookie or a "Bearer" header, whose key claim (`iss` by default) names one of the
-- consumers' jwt_secrets. Kong 3.x's behaviour, statuses and messages: every failure is 401
-- with {"message": ...} (or, for claim checks, an object of claim -> error such as
-- {"exp":"token expired"}) and a Bearer WWW-Authenticate challenge.
-- The token's "alg" must be the credential's configured algorithm, so an RSA/EC public key
-- is never used as an HMAC secret (algorithm confusion); "none" and unknown algorithms are
-- refused while parsing. Better than Kong: HMAC signatures are compared in constant time,
-- the token is size-bounded and strictly decoded (moongate.plugins.jwt.parser), and the
-- header a token came in is redacted from what logging plugins see.
local auth = require "moongate.auth"
local consumers = require "moongate.consumers"
local crypto = require "moongate.crypto"
local parser = require "moongate.plugins.jwt.parser"

local type, ipairs, setmetatable, floor = type, ipairs, setmetatable, math.floor
local match, lower, gmatch, find, sub, byte = string.match, string.lower, string.gmatch,
  string.find, string.sub, string.byte
local hmac, equals, verify, decode_base64 = crypto.hmac, crypto.equals, crypto.verify,
  crypto.decode_base64
local KEY_RULES = consumers.JWT_KEY_RULES
local HUGE = math.huge

local Jwt = { PRIORITY = 1450, VERSION = "1.0.0" }

local HMAC_DIGEST = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }
-- JOSE carries ECDSA signatures as r || s, each as wide as the curve's order
local ECDSA_RAW = { ES256 = { ecdsa_raw = true, width = 32 },
                    ES384 = { ecdsa_raw = true, width = 48 } }

-- ---- per-config precomputation -----------------------------------------------------------

-- conf -> { challenge = headers, challenge_err = headers, cookies = { lower name, ... },
--           verify_exp, verify_nbf }
local prepared = setmetatable({}, { __mode = "k" })

local function prepare(conf)
  local p = prepared[conf]
  if p then return p end
  local base = auth.challenge("Bearer", conf.realm)
  -- RFC 6750 §3 separates the auth-params with a comma (Kong writes a bare space)
  local with_error = auth.challenge("Bearer", conf.realm, 'error="invalid_token"')
  local cookies = {}
  for i, name in ipairs(conf.cookie_names or {}) do cookies[i] = lower(name) end
  p = { challenge = { ["WWW-Authenticate"] = base },
        challenge_err = { ["WWW-Authenticate"] = with_error },
        cookies = cookies }
  for _, claim in ipairs(conf.claims_to_verify or {}) do
    p["verify_" .. claim] = true
  end
  prepared[conf] = p
  return p
end

-- ---- finding the token -------------------------------------------------------------------

-- The value of the first cookie called `name` (case-insensitive, as nginx's $cookie_NAME)
-- in a Cookie header value, or nil.
local function cookie_value(header, name)
  for pair in gmatch(header, "[^;]+") do
    local k, v = match(pair, "^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k and lower(k) == name then return v end
  end
  return nil
end

local SPACE = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }

-- The token of a "Bearer <token>" value (the scheme in any case, RFC 7235 §2.1), trailing
-- whitespace trimmed; nil for another scheme. An anchored find for the scheme and a byte
-- loop for the tail: one pattern ending in `(.-)%s*$` retried its tail at every byte of a
-- ~1 KB token, 6 us of Lua's pattern matcher per request (bench/ jwt).
local function bearer_token(v)
  local _, e, scheme = find(v, "^%s*(%a+)%s+")
  if not e or lower(scheme) ~= "bearer" then return nil end
  local last = #v
  while last > e and SPACE[byte(v, last)] do last = last - 1 end
  return sub(v, e + 1, last)
end

-- Adds a candidate: returns the token so far, and whether a different one was seen.
local function add(token, multiple, candidate)
  if type(candidate) ~= "string" or candidate == "" then return token, multiple end
  if token == nil then return candidate, multiple end
  return token, multiple or token ~= candidate
end

-- Looks in the query string, the cookies and the headers, in Kong's order. Returns the
-- token (nil when there is none) and true when more than one distinct token was sent.
local function find_token(conf, p)
  local request = moongate.request
  local token, multiple

  local names = conf.uri_param_names
  if names and names[1] ~= nil and (request.get_raw_query() or "") ~= "" then
    local query = request.get_query()
    for _, name in ipairs(names) do
      local v = query[name]
      if type(v) == "table" then
        for _, one in ipairs(v) do token, multiple = add(token, multiple, one) end
      else
        token, multiple = add(token, multiple, v)
      end
    end
  end

  local cookies = p.cookies
  if cookies[1] ~= nil then
    -- one Cookie line: a user agent sends no more (RFC 6265 §5.4)
    local header = request.get_header("Cookie")
    if header then
      for _, name in ipairs(cookies) do
        token, multiple = add(token, multiple, cookie_value(header, name))
      end
    end
  end

  for _, name in ipairs(conf.header_names or {}) do
    local v = request.get_header(name)
    if v then
      -- a secret may sit there even if it is not a valid token: keep it out of the logs
      moongate.log.redact_header(name)
      -- Kong reads the first occurrence of a repeated header, as get_header does
      local rest = bearer_token(v)
      if rest then token, multiple = add(token, multiple, rest) end
    end
  end

  return token, multiple
end

-- ---- verification ------------------------------------------------------------------------

-- the HMAC key of a credential (decoded once when secret_is_base64)
local b64_secret = setmetatable({}, { __mode = "k" })
local function hmac_key(cred, conf)
  if not conf.secret_is_base64 then return cred.secret end
  local k = b64_secret[cred]
  if k == nil then
    -- Kong accepts either alphabet, padded or not
    k = decode_base64(cred.secret) or decode_base64(cred.secret, true) or false
    b64_secret[cred] = k
  end
  return k or nil
end

local function signature_ok(jwt, cred, conf)
  local alg = cred.algorithm
  local digest = HMAC_DIGEST[alg]
  if digest then
    local key = hmac_key(cred, conf)
    if not key then return nil, "Invalid key/secret" end
    return equals(hmac(digest, key, jwt.signing_input), jwt.signature)
  end
  -- RS* and ES*: the public key parsed and checked (type, size, curve) at config load
  return verify(cred._key, KEY_RULES[alg][2], jwt.signing_input, jwt.signature, ECDSA_RAW[alg])
end

local function is_number(v)
  return type(v) == "number" and v == v and v ~= HUGE and v ~= -HUGE
end

-- Kong's registered-claim checks: nil, or a table claim -> error
local function claim_errors(claims, p, now)
  local errors
  if p.verify_nbf then
    local nbf = claims.nbf
    if not is_number(nbf) then
      errors = { nbf = "must be a number" }
    elseif nbf > now then
      errors = { nbf = "token not valid yet" }
    end
  end
  if p.verify_exp then
    local exp, err = claims.exp, nil
    if not is_number(exp) then
      err = "must be a number"
    elseif exp <= now then
      err = "token expired"
    end
    if err then
      errors = errors or {}
      errors.exp = err
    end
  end
  return errors
end

-- ---- the phase ---------------------------------------------------------------------------

-- Authenticates; on failure returns the status-401 body (a message, or a claim -> error
-- table as the second value) and the challenge headers.
local function authenticate(conf, p)
  local token, multiple = find_token(conf, p)
  if token == nil then return "Unauthorized", nil, p.challenge end
  if multiple then return "Multiple tokens provided", nil, p.challenge_err end

  local jwt, why = parser.parse(token)
  if not jwt then return "Bad token; " .. why, nil, p.challenge_err end

  local claim_name = conf.key_claim_name
  local key = jwt.claims[claim_name]
  if key == nil then key = jwt.header[claim_name] end
  if key == nil then
    return "No mandatory '" .. claim_name .. "' in claims", nil, p.challenge_err
  end
  if type(key) ~= "string" or key == "" then
    return "Invalid '" .. claim_name .. "' in claims", nil, p.challenge_err
  end

  local cred, consumer = consumers.find_credential("jwt_secrets", key)
  if not cred then
    return "No credentials found for given '" .. claim_name .. "'", nil, p.challenge_err
  end
  -- the credential decides the algorithm, never the token
  if jwt.header.alg ~= cred.algorithm then
    return "Invalid algorithm", nil, p.challenge_err
  end
  local ok, err = signature_ok(jwt, cred, conf)
  if not ok then return err or "Invalid signature", nil, p.challenge_err end

  local now = floor(moongate.now())
  local errors = claim_errors(jwt.claims, p, now)
  if errors then return nil, errors, p.challenge_err end
  local max = conf.maximum_expiration
  if max and max > 0 then
    local exp = jwt.claims.exp
    if not is_number(exp) or exp - now > max then
      return nil, { exp = "exceeds maximum allowed expiration" }, p.challenge_err
    end
  end

  auth.set_consumer(consumer, cred, cred.key)
  moongate.ctx.shared.authenticated_jwt_token = token
  return true
end

function Jwt:access(conf)
  if auth.preflight_skipped(conf) or auth.skip(conf) then return end
  local p = prepare(conf)
  local message, errors, challenge = authenticate(conf, p)
  if message == true then return end
  moongate.ctx.shared.authenticated_jwt_token = nil
  if errors and not (conf.anonymous and conf.anonymous ~= "") then
    return moongate.response.exit(401, errors, challenge)
  end
  return auth.reject(conf, 401, message, challenge)
end

return Jwt
