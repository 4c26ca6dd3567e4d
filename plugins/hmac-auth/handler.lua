--- hmac-auth: authenticates a request by an HTTP signature (draft-cavage, as Kong parses it)
-- sent in Proxy-Authorization or Authorization:
--   hmac username="alice", algorithm="hmac-sha256", headers="date request-line",
--        signature="<base64 HMAC of the signing string under the credential's secret>"
-- The signing string has one line per listed name: "name: value" for a header ("name:" when
-- the request lacks it), the request line ("GET /path?query HTTP/1.1") for `request-line`,
-- "@request-target: get /path?query" for `@request-target`. A Date or X-Date header within
-- clock_skew is required; with validate_request_body, a Digest header must carry the body's
-- SHA-256. Kong 3.x's statuses and messages (all 401, with a WWW-Authenticate challenge):
-- no header → "Unauthorized"; a bad date → the date message; a malformed header, an algorithm
-- not allowed, an enforced header not signed or an unknown username → "HMAC signature cannot
-- be verified"; a wrong signature or body digest → "HMAC signature does not match".
-- Unlike Kong, signatures are compared in constant time, the pseudo-headers are always the
-- request's own (a client header named "request-line" cannot stand in for it), and a request
-- line signed without its query string is not accepted (Kong still allows it, which lets
-- anyone rewrite the query of a signed request). The "hmac" scheme must open the header value
-- (any case); Kong's unanchored regex also finds it after leading junk.
local auth = require "moongate.auth"
local consumers = require "moongate.consumers"
local crypto = require "moongate.crypto"

local floor, abs, tonumber, ipairs = math.floor, math.abs, tonumber, ipairs
local find, sub, lower, match, format = string.find, string.sub, string.lower, string.match,
  string.format
local concat = table.concat

local HmacAuth = { PRIORITY = 1030, VERSION = "1.0.0" }

local AUTHORIZATION = "Authorization"
local PROXY_AUTHORIZATION = "Proxy-Authorization"

local UNAUTHORIZED = "Unauthorized"
local BAD_DATE = "HMAC signature cannot be verified, a valid date or x-date header is "
                 .. "required for HMAC Authentication"
local NOT_VALID = "HMAC signature cannot be verified"
local NOT_SAME = "HMAC signature does not match"

local DIGESTS = { ["hmac-sha1"] = "sha1", ["hmac-sha256"] = "sha256",
                  ["hmac-sha384"] = "sha384", ["hmac-sha512"] = "sha512" }

-- More names than any real client signs; bounds the work one request can ask for.
local MAX_SIGNED_HEADERS = 100

-- ---- per-config precomputation -----------------------------------------------------------

local prepared = setmetatable({}, { __mode = "k" })   -- conf -> { challenge, allowed }
local function prepare(conf)
  local p = prepared[conf]
  if not p then
    local allowed = {}
    for _, alg in ipairs(conf.algorithms) do allowed[alg] = true end
    p = {
      challenge = { ["WWW-Authenticate"] = auth.challenge("hmac", conf.realm) },
      allowed = allowed,
    }
    prepared[conf] = p
  end
  return p
end

-- ---- HTTP dates (what nginx's ngx_parse_http_time accepts) -------------------------------

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
local MONTH_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil): no
-- os.time, whose answer depends on the local time zone.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end

--- Seconds since the epoch for an RFC 1123, RFC 850 or asctime date; nil otherwise.
local function parse_http_date(s)
  local d, mon, y, h, mi, se = match(s, "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) "
                                        .. "(%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, h, mi, se = match(s, "^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if d then
      y = tonumber(y)
      y = y + (y < 70 and 2000 or 1900)
    else
      mon, d, h, mi, se, y = match(s, "^%a+ (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) "
                                      .. "(%d%d%d%d)$")
      if not mon then return nil end
    end
  end
  local m = MONTHS[mon]
  d, y, h, mi, se = tonumber(d), tonumber(y), tonumber(h), tonumber(mi), tonumber(se)
  if not m or not d or d < 1 or d > MONTH_DAYS[m] or h > 23 or mi > 59 or se > 59 then
    return nil
  end
  if m == 2 and d == 29 and not (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then
    return nil
  end
  return days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + se
end

-- Kong compares with ngx.time(), whole seconds: a Date exactly clock_skew away passes.
local function date_ok(name, skew, now)
  local v = moongate.request.get_header(name)
  local t = v and parse_http_date(v)
  return t ~= nil and abs(now - t) <= skew
end

-- ---- the Authorization header ------------------------------------------------------------

--- The signature parameters of an "hmac k="v", ..." value: username, algorithm, the
-- headers list and signature, or nil when the value is not one. Parameters may come in any
-- order with optional spaces (Kong insists on this order; everything it accepts parses
-- here); a duplicate, an unquoted value or a missing parameter makes the value invalid.
local function parse_authorization(value)
  if not value then return nil end
  local _, e = find(value, "^%s*[Hh][Mm][Aa][Cc]%s+")
  if not e then return nil end
  local username, algorithm, headers, signature
  local pos, n = e + 1, #value
  while pos <= n do
    local k, v, e2 = match(value, '^([%w_%-]+)%s*=%s*"([^"]*)"%s*()', pos)
    if not k then return nil end
    if k == "username" then
      if username then return nil end
      username = v
    elseif k == "algorithm" then
      if algorithm then return nil end
      algorithm = v
    elseif k == "headers" then
      if headers then return nil end
      headers = v
    elseif k == "signature" then
      if signature then return nil end
      signature = v
    end                                  -- others (keyId, created, ...) are not Kong's
    pos = e2
    if pos <= n then
      local _, ce = find(value, "^,%s*", pos)
      if not ce or ce == n then return nil end
      pos = ce + 1
    end
  end
  if not username or username == "" or not algorithm or not headers or headers == ""
     or not signature then
    return nil
  end
  return username, algorithm, headers, signature
end

-- The listed names, split on single spaces exactly as Kong does (so "a  b" has an empty
-- name in the middle, signed as ":"), into a reused array; nil when there are too many.
local names = {}
local function split_names(list)
  local count, pos = 0, 1
  while true do
    count = count + 1
    if count > MAX_SIGNED_HEADERS then return nil end
    local sp = find(list, " ", pos, true)
    if not sp then
      names[count] = sub(list, pos)
      break
    end
    names[count] = sub(list, pos, sp - 1)
    pos = sp + 1
  end
  for i = count + 1, #names do names[i] = nil end
  return count
end

-- Every enforced header among the first `count` signed names (compared as Kong does:
-- exactly, so enforcing "request-line" is not met by a header called "Request-Line").
local function enforced(conf, count)
  for _, want in ipairs(conf.enforce_headers) do
    local found = false
    for i = 1, count do
      if names[i] == want then
        found = true
        break
      end
    end
    if not found then return false end
  end
  return true
end

-- ---- the signing string ------------------------------------------------------------------

local function target()
  local request = moongate.request
  local query = request.get_raw_query()
  local path = request.get_path()
  if query and query ~= "" then return path .. "?" .. query end
  return path
end

local lines = {}
local function signing_string(count)
  local request = moongate.request
  local tgt
  for i = 1, count do
    local name = names[i]
    if name == "request-line" then
      tgt = tgt or target()
      lines[i] = format("%s %s HTTP/%.1f", request.get_method(), tgt,
                        request.get_http_version())
    elseif name == "@request-target" then
      tgt = tgt or target()
      lines[i] = "@request-target: " .. lower(request.get_method()) .. " " .. tgt
    else
      local v = name ~= "" and request.get_header(name) or nil
      lines[i] = v and (name .. ": " .. v) or (name .. ":")
    end
  end
  local s = concat(lines, "\n", 1, count)
  for i = 1, #lines do lines[i] = nil end        -- keep no request data between requests
  return s
end

-- ---- the body ----------------------------------------------------------------------------

-- Kong's rule: without a Digest header only an empty body passes; with one, it must be
-- exactly "SHA-256=<base64 of the body's SHA-256>".
local function body_ok()
  local body = moongate.request.get_raw_body()
  if not body then return false end              -- unreadable (too large): cannot vouch
  local digest = moongate.request.get_header("Digest")
  if not digest then return body == "" end
  return crypto.equals(digest, "SHA-256=" .. crypto.encode_base64(crypto.digest("sha256",
                                                                                 body)))
end

-- ---- access ------------------------------------------------------------------------------

-- nil once the consumer is set, else the message to reject with.
local function authenticate(conf, p)
  local request = moongate.request
  local authorization = request.get_header(AUTHORIZATION)
  local proxy_authorization = request.get_header(PROXY_AUTHORIZATION)
  if not (authorization or proxy_authorization) then return UNAUTHORIZED end

  local now = floor(moongate.now())
  if not (date_ok("X-Date", conf.clock_skew, now) or date_ok("Date", conf.clock_skew, now)) then
    return BAD_DATE
  end

  -- Proxy-Authorization first, then Authorization (Kong's order); hide_credentials hides
  -- the header that was used, even when what it carries turns out to be wrong.
  local header = PROXY_AUTHORIZATION
  local username, algorithm, list, signature = parse_authorization(proxy_authorization)
  if not username then
    header = AUTHORIZATION
    username, algorithm, list, signature = parse_authorization(authorization)
  end
  if header == AUTHORIZATION and not authorization then header = nil end
  if header then
    moongate.log.redact_header(header)
    if conf.hide_credentials then moongate.service.request.clear_header(header) end
  end
  if not username then return NOT_VALID end

  local count = split_names(list)
  if not count then return NOT_VALID end
  if not enforced(conf, count) then
    moongate.log.debug("enforced header not used for signature creation")
    return NOT_VALID
  end
  if not p.allowed[algorithm] then
    moongate.log.debug("algorithm not allowed by the configuration")
    return NOT_VALID
  end

  local credential, consumer = consumers.find_credential("hmacauth_credentials", username)
  if not credential then return NOT_VALID end

  local expected = crypto.hmac(DIGESTS[algorithm], credential.secret, signing_string(count))
  -- constant time (Kong compares with ==); a signature that is not base64 cannot match
  if not crypto.equals(crypto.decode_base64(signature) or "", expected) then
    return NOT_SAME
  end
  if conf.validate_request_body and not body_ok() then
    moongate.log.debug("digest validation failed")
    return NOT_SAME
  end

  auth.set_consumer(consumer, credential, credential.username)
  return nil
end

function HmacAuth:access(conf)
  if auth.skip(conf) then return end
  local p = prepare(conf)
  local message = authenticate(conf, p)
  if message then return auth.reject(conf, 401, message, p.challenge) end
end

-- exposed for the specs
HmacAuth._parse_http_date = parse_http_date
HmacAuth._parse_authorization = parse_authorization

return HmacAuth
