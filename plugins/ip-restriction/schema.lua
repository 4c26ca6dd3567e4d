--- ip-restriction's configuration: Kong 3.x's fields (allow, deny, status, message) and its
-- entity check (at least one of allow and deny). Every entry must be an IPv4 or IPv6 address
-- or CIDR block, refused at config load with its path and Kong's message otherwise.
--
-- What "valid" means is decided by the parser that will match the entry: the C range set's
-- (inet_pton plus a decimal prefix), tried on a scratch set when the moongate binary is
-- present (the gateway, `moongate check`). Plain LuaJIT (the schema spec) has no C side, so
-- a Lua transcription of the same rules stands in; the schema spec runs one table of cases
-- through both and expects the same verdicts.
local ffi = require "ffi"

local find, match, sub, byte = string.find, string.match, string.sub, string.byte
local tonumber, pcall = tonumber, pcall

-- The C parser copies the address part into a char[INET6_ADDRSTRLEN] (46) buffer.
local MAX_ADDR = 45

-- inet_pton(AF_INET): exactly four decimal parts 0-255, no leading zeros, nothing else.
local function valid_v4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, part in ipairs({ a, b, c, d }) do
    if #part > 3 or (#part > 1 and byte(part, 1) == 48) or tonumber(part) > 255 then
      return false
    end
  end
  return true
end

-- Counts the 16-bit groups of one side of "::" ("" has none); a dotted IPv4 tail counts as
-- two and may only end the address. nil when a group is malformed.
local function v6_groups(part, may_end_in_v4)
  if part == "" then return 0 end
  local n, pos, len = 0, 1, #part
  while true do
    local colon = find(part, ":", pos, true)
    local group = sub(part, pos, (colon or len + 1) - 1)
    if not colon and may_end_in_v4 and find(group, ".", 1, true) then
      if not valid_v4(group) then return nil end
      return n + 2
    end
    if not match(group, "^%x%x?%x?%x?$") then return nil end
    n = n + 1
    if not colon then return n end
    pos = colon + 1
  end
end

-- inet_pton(AF_INET6): eight groups, or fewer around one "::" that stands for at least one.
local function valid_v6(s)
  local dc = find(s, "::", 1, true)
  if not dc then
    return v6_groups(s, true) == 8
  end
  local head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
  if find(tail, "::", 1, true) then return false end
  local a, b = v6_groups(head, false), v6_groups(tail, true)
  return a ~= nil and b ~= nil and a + b <= 7
end

--- The Lua transcription of the C parser (mg_cidr_parse): an address, optionally "/" and a
-- prefix of one to three digits no larger than the family's width.
local function lua_valid(s)
  local slash = find(s, "/", 1, true)
  local addr = slash and sub(s, 1, slash - 1) or s
  if #addr == 0 or #addr > MAX_ADDR then return false end
  local bits
  if valid_v4(addr) then
    bits = 32
  elseif valid_v6(addr) then
    bits = 128
  else
    return false
  end
  if not slash then return true end
  local prefix = sub(s, slash + 1)
  return match(prefix, "^%d%d?%d?$") ~= nil and tonumber(prefix) <= bits
end

-- The C parser, when this Lua state runs inside the moongate binary: one scratch set, reused.
local c_valid
do
  local ok, base = pcall(require, "moongate.core.base")
  if ok then
    local C = base.C
    local scratch = ffi.gc(C.mg_ffi_ipset_new(), C.mg_ffi_ipset_free)
    local added = 0
    c_valid = function(s)
      if added >= 1024 then   -- entries pile up in the scratch set: start a fresh one
        scratch, added = ffi.gc(C.mg_ffi_ipset_new(), C.mg_ffi_ipset_free), 0
      end
      if C.mg_ffi_ipset_add(scratch, s, #s) ~= 0 then return false end
      added = added + 1
      return true
    end
  end
end

local function validate_ip_or_cidr(value)
  -- inet_pton would stop at a NUL and take what precedes it: refuse it before either parser
  if not find(value, "%z") and (c_valid or lua_valid)(value) then
    return true
  end
  -- Kong's typedefs.ip_or_cidr message
  return nil, "invalid ip or cidr range: '" .. value .. "'"
end

local ip_or_cidr = {
  type = "string",
  custom_validator = validate_ip_or_cidr,
  description = "An IPv4 or IPv6 address or CIDR block, such as 192.168.1.1 or 10.0.0.0/8.",
}

return {
  name = "ip-restriction",
  fields = {
    { config = {
        type = "record",
        fields = {
          { allow = { type = "array", elements = ip_or_cidr,
                      description = "IPs or CIDR blocks let through; everyone else is "
                                    .. "refused. One of allow or deny must be given." } },
          { deny = { type = "array", elements = ip_or_cidr,
                     description = "IPs or CIDR blocks refused; deny wins over allow." } },
          -- Kong's type is "number", but kong.response.error() only takes 400-599: anything
          -- else fails every refused request there, so it is refused at load here.
          { status = { type = "integer", between = { 400, 599 },
                       description = "The HTTP status of refused requests (default 403)." } },
          { message = { type = "string",
                        description = "The message of refused requests (default \"IP "
                                      .. "address not allowed: <client ip>\")." } },
        },
    } },
  },
  entity_checks = {
    { at_least_one_of = { "config.allow", "config.deny" } },
  },
}
