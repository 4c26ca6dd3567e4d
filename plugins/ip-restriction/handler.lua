--- ip-restriction: refuses or admits a request by the client's address, Kong 3.x's way. The
-- address is moongate.client.get_forwarded_ip() (the peer's, or what a trusted proxy said in
-- real_ip_header: Kong reads nginx's realip result the same way). A match in `deny` refuses,
-- whatever `allow` says; with `allow` set, an address outside it is refused. A refusal is
-- `status` (403) with {"message": `message`}, by default "IP address not allowed: <ip>".
--
-- Matching never scans strings per request: each list becomes a C range set (sorted, merged
-- ranges; an O(log n) binary search per lookup, IPv4-mapped IPv6 folded to IPv4) built once
-- per config and worker, cached in a table weakly keyed by the config, and freed by ffi.gc
-- when that config is collected. The sets are reached through the FFI directly: the brief
-- for this plugin asks for that, as the PDK has no range-set API.
local ffi = require "ffi"
local base = require "moongate.core.base"

local C = base.C
local ffi_gc = ffi.gc
local error, tostring = error, tostring

local IpRestriction = { PRIORITY = 990, VERSION = "1.0.0" }

local FORBIDDEN = 403
-- Kong answers an address it cannot parse (a unix socket there) with a fixed 403; here that
-- can only be a trusted proxy's malformed header, refused rather than guessed around.
local UNKNOWN = { message = "Cannot identify the client IP address" }

local sets_of = setmetatable({}, { __mode = "k" })   -- conf -> { deny = set, allow = set }

-- A built range set for a list, or false when the list is absent or empty (then it is not
-- consulted: Kong's isempty()).
local function build(list, field)
  if list == nil or #list == 0 then return false end
  local set = C.mg_ffi_ipset_new()
  if set == nil then error("ip-restriction: out of memory building the " .. field .. " set") end
  set = ffi_gc(set, C.mg_ffi_ipset_free)
  for i = 1, #list do
    local entry = list[i]
    if C.mg_ffi_ipset_add(set, entry, #entry) ~= 0 then
      -- the schema ran the same parser: only memory exhaustion gets here
      error("ip-restriction: cannot add " .. field .. "[" .. (i - 1) .. "] ("
            .. tostring(entry) .. ")")
    end
  end
  C.mg_ffi_ipset_build(set)
  return set
end

local function sets(conf)
  local s = sets_of[conf]
  if not s then
    s = { deny = build(conf.deny, "deny"), allow = build(conf.allow, "allow") }
    -- the default body depends on the address, so only a configured message is prebuilt
    s.body = conf.message and { message = conf.message } or nil
    s.status = conf.status or FORBIDDEN
    sets_of[conf] = s
  end
  return s
end

local function refuse(s, ip)
  local message = "IP address not allowed: " .. ip
  -- Kong logs every refusal at warn; info keeps a refused scanner from flooding the error
  -- log at the default level (the access log has each 403 anyway)
  moongate.log.info(message)
  return moongate.response.exit(s.status, s.body or { message = message })
end

function IpRestriction:access(conf)
  local s = sets(conf)
  local ip = moongate.client.get_forwarded_ip()
  if not ip then return moongate.response.exit(FORBIDDEN, UNKNOWN) end
  local n = #ip
  if s.deny then
    local found = C.mg_ffi_ipset_contains(s.deny, ip, n)
    if found == 1 then return refuse(s, ip) end
    if found ~= 0 then return moongate.response.exit(FORBIDDEN, UNKNOWN) end
  end
  if s.allow then
    local found = C.mg_ffi_ipset_contains(s.allow, ip, n)
    if found == 0 then return refuse(s, ip) end
    if found ~= 1 then return moongate.response.exit(FORBIDDEN, UNKNOWN) end
  end
end

return IpRestriction
