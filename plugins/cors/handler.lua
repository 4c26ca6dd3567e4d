--- cors: Cross-Origin Resource Sharing, as Kong 3.x's cors plugin does it (its handler.lua,
-- Apache-2.0, is the reference for every header and every odd corner kept here).
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered 200 by the
-- gateway with the Access-Control-* headers, or proxied untouched with preflight_continue;
-- any other response gets Access-Control-Allow-Origin (+ Credentials, Expose-Headers). Kong
-- adds those in header_filter, which moongate runs for upstream responses only; they are set
-- from access here, so a later plugin's exit (an auth plugin's 401) carries them as in Kong.
-- (Not covered, unlike Kong: the gateway's own error pages, such as a 502, and an exit made
-- by a plugin that runs before this one: the runtime applies neither header ops nor
-- header_filter to those.)
--
-- Origins, as Kong reads them: no entry or only "*" allows all ("*", no Vary); a single
-- entry made only of [A-Za-z0-9.:/-] is sent as is, whatever the request's Origin; otherwise
-- the request's Origin is normalised (scheme://host[:port], default port dropped) and
-- compared with each entry: a plain entry by equality, any other as a regex anchored at both
-- ends, against the host alone when the entry has no ":" and against the whole normalised
-- origin when it has. A "*" among several entries allows every origin.
--
-- Where this differs from Kong, on purpose:
-- * Kong appends "$" to a regex and relies on the start anchor, so an alternation escapes it
--   ("a\.test|b\.test" lets "a.test.evil.io" in); here the entry is wrapped whole,
--   "(?:entry\E)\z", so every alternative must span the whole subject.
-- * scheme and host compare case-insensitively (RFC 6454) and are echoed lower-cased; an
--   IPv6 host keeps its brackets in the echoed origin (Kong's URL parser drops them, which
--   no browser accepts); userinfo, a query or a fragment never become part of the host.
-- * Vary: Origin is added once per response (Kong can add it twice with credentials).
local re = require "moongate.re"

local type, tostring, ipairs, setmetatable = type, tostring, ipairs, setmetatable
local concat = table.concat
local find, sub, lower, match, gsub, fmt = string.find, string.sub, string.lower,
  string.match, string.gsub, string.format
local floor = math.floor

local Cors = { PRIORITY = 2000, VERSION = "1.0.0" }

local DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
local REGEX_OPTS = "ajo"

---------------------------------------------------------------------------------------------
-- Origins: parsing (luasocket's url.parse as Kong uses it, minus its IPv6 slip)
---------------------------------------------------------------------------------------------

-- { domain = normalised origin, host = host alone } for an origin string. Without an
-- authority ("example.com", "null") both are the string itself, as in Kong.
local function normalize(origin)
  local s = gsub(origin, "#.*$", "")
  local scheme
  s = gsub(s, "^([%w][%w%+%-%.]*):", function(x) scheme = x; return "" end)
  local authority = match(s, "^//([^/]*)")
  if not authority then
    return { domain = origin, host = origin }
  end
  authority = gsub(authority, "[?;].*$", "")        -- no query or params in an origin
  authority = gsub(authority, "^[^@]*@", "")        -- userinfo never belongs to an origin
  local port
  authority = gsub(authority, ":([^:%]]*)$", function(p) port = p; return "" end)
  if authority == "" then
    return { domain = origin, host = origin }
  end
  local host = lower(authority)
  local bare = match(host, "^%[(.+)%]$")           -- IPv6: host without, domain with []
  scheme = scheme and lower(scheme)
  if (scheme == "http" and port == "80") or (scheme == "https" and port == "443") then
    port = nil
  end
  return { domain = (scheme and scheme .. "://" or "") .. host .. (port and ":" .. port or ""),
           host = bare or host }
end

-- The request's Origin, normalised (and lower-cased for plain entries); a bounded cache, as
-- parsing is the costly part.
local seen, seen_n, SEEN_MAX = {}, 0, 1000
local function normalized(origin)
  local n = seen[origin]
  if n then return n end
  n = normalize(origin)
  n.key = lower(n.domain)
  if seen_n >= SEEN_MAX then seen, seen_n = {}, 0 end  -- a flood of new origins only resets it
  seen[origin] = n
  seen_n = seen_n + 1
  return n
end

---------------------------------------------------------------------------------------------
-- Per config: what never changes between requests, computed once
---------------------------------------------------------------------------------------------

local function joined(list)
  if type(list) == "table" and #list > 0 then return concat(list, ",") end
  return nil
end

local function compile(conf)
  local p = { origins = {} }
  local origins = type(conf.origins) == "table" and conf.origins or {}
  local n = #origins
  if n == 0 or (n == 1 and origins[1] == "*") then
    p.allow_all = true
  elseif n == 1 and find(origins[1], "^[A-Za-z0-9.:/-]+$") then
    p.fixed = origins[1]                        -- Kong: sent as is, the browser compares
  else
    for _, entry in ipairs(origins) do
      if entry == "*" then
        p.star = true                           -- Kong: "*" anywhere allows every origin
      elseif find(entry, "[^A-Za-z0-9.:/-]") then
        -- Kong strips a leading "^" (the match is anchored anyway) and keeps a user's "$";
        -- the group keeps alternatives inside both anchors.
        local body = sub(entry, 1, 1) == "^" and sub(entry, 2) or entry
        local regex = "(?:" .. body .. "\\E)\\z"    -- \E: ends a trailing \Q
        local ok, err = re.compile(regex, REGEX_OPTS)
        if ok then
          p.origins[#p.origins + 1] = { regex = regex, by_host = not find(entry, ":", 1, true) }
        else   -- the schema compiled the same string: only a hand-made conf gets here
          moongate.log.err("origin '", entry, "' is not a valid regex: ", err)
        end
      else
        p.origins[#p.origins + 1] = { domain = lower(normalize(entry).domain) }
      end
    end
  end
  p.headers = joined(conf.headers)
  p.exposed = joined(conf.exposed_headers)
  -- Kong: an absent (null) methods means all of them; an empty list is sent empty
  p.methods = type(conf.methods) == "table" and concat(conf.methods, ",") or DEFAULT_METHODS
  local age = conf.max_age
  if type(age) == "number" then
    p.max_age = (age == floor(age) and age > -1e15 and age < 1e15) and fmt("%d", age)
                or tostring(age)
  end
  return p
end

local plans = setmetatable({}, { __mode = "k" })   -- conf -> compiled plan
local function plan_of(conf)
  local p = plans[conf]
  if not p then
    p = compile(conf)
    plans[conf] = p
  end
  return p
end

---------------------------------------------------------------------------------------------
-- The headers
---------------------------------------------------------------------------------------------

local function add_vary(add)
  -- a preflight's answer is ours alone; any other response may carry the upstream's Vary,
  -- which must survive
  if add then
    moongate.response.add_header("Vary", "Origin")
  else
    moongate.response.set_header("Vary", "Origin")
  end
end

local function matches(p, origin)
  local n = normalized(origin)
  local domain = n.domain
  for _, o in ipairs(p.origins) do
    if o.regex then
      local from, _, err = re.find(o.by_host and n.host or domain, o.regex, REGEX_OPTS)
      if from then return domain end
      if err then moongate.log.err("could not match origin: ", err) end
    elseif n.key == o.domain then
      return domain
    end
  end
  return nil
end

-- Sets Access-Control-Allow-Origin; returns allow_all, vary_added.
local function configure_origin(p, add, origin)
  local set_header = moongate.response.set_header
  if p.allow_all then
    set_header("Access-Control-Allow-Origin", "*")
    return true, false
  end
  -- the answer depends on the origin from here on (and caches key on Vary)
  add_vary(add)
  if p.fixed then
    set_header("Access-Control-Allow-Origin", p.fixed)
    return false, true
  end
  if origin then
    if p.star then
      set_header("Access-Control-Allow-Origin", "*")
      return true, true
    end
    local allowed = matches(p, origin)
    if allowed then
      set_header("Access-Control-Allow-Origin", allowed)
      return false, true
    end
  end
  -- no match: an upstream's own Access-Control-Allow-Origin must not slip through either
  moongate.response.clear_header("Access-Control-Allow-Origin")
  return false, true
end

local function configure_credentials(conf, allow_all, vary_added, add, origin)
  if not conf.credentials then return end
  local set_header = moongate.response.set_header
  if not allow_all then
    set_header("Access-Control-Allow-Credentials", "true")
    return
  end
  -- "*" cannot go with credentials: Kong echoes the request's Origin instead
  if origin then
    if not vary_added then add_vary(add) end
    set_header("Access-Control-Allow-Origin", origin)
    set_header("Access-Control-Allow-Credentials", "true")
  end
end

-- An empty Origin is no Origin (Kong 3.11 stopped failing on it)
local function request_origin()
  local origin = moongate.request.get_header("Origin")
  if origin == "" then return nil end
  return origin
end

-- The headers of a response that is not a preflight's.
local function simple_headers(conf, origin)
  if not origin and not conf.allow_origin_absent then return end
  local p = plan_of(conf)
  local allow_all, vary_added = configure_origin(p, true, origin)
  configure_credentials(conf, allow_all, vary_added, true, origin)
  if p.exposed then
    moongate.response.set_header("Access-Control-Expose-Headers", p.exposed)
  end
end

local function preflight(conf, origin)
  local p = plan_of(conf)
  local request, set_header = moongate.request, moongate.response.set_header
  local allow_all, vary_added = configure_origin(p, false, origin)
  configure_credentials(conf, allow_all, vary_added, false, origin)

  if p.headers then
    set_header("Access-Control-Allow-Headers", p.headers)
  else
    local acrh = request.get_header("Access-Control-Request-Headers")
    if acrh then
      set_header("Access-Control-Allow-Headers", acrh)
    else
      moongate.response.clear_header("Access-Control-Allow-Headers")
    end
  end
  set_header("Access-Control-Allow-Methods", p.methods)
  if p.max_age then set_header("Access-Control-Max-Age", p.max_age) end
  if conf.private_network
     and request.get_header("Access-Control-Request-Private-Network") == "true" then
    set_header("Access-Control-Allow-Private-Network", "true")
  end
  return moongate.response.exit(200)
end

function Cors:access(conf)
  local request = moongate.request
  local origin = request_origin()
  if origin and request.get_method() == "OPTIONS"
     and request.get_header("Access-Control-Request-Method") then
    -- a preflight: answered here, or with preflight_continue left wholly to the upstream
    if conf.preflight_continue then return end
    return preflight(conf, origin)
  end
  -- Kong adds these in header_filter. Set now, they reach the upstream's response and an
  -- answer a later plugin makes with exit alike (for which moongate runs no header_filter),
  -- and with no header_filter the route's responses need no Lua at all; no per-request
  -- state is needed either.
  simple_headers(conf, origin)
end

-- for the spec: the origin parser, checked against the luasocket-based one Kong uses
Cors._normalize = normalize

return Cors
